"""HTTP/2 from clients, end to end: curl (ALPN and prior knowledge), httpx, h2load, a raw
h2 client for what the others cannot show (trailers, refused fields, CONNECT, GOAWAY), and
HTTP/1 clients on the same listener. Every request goes through a real rproxyd to the demo
origin (appliance/demo_origin.py), all on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ScriptedBackend, wait_for
from tests.support.h2 import H2Client
from tests.support.tls import client_context, https_get, make_certs
from tests.support_proc import GREETING, Rproxyd, config_text, demo_origin, get
from tests.test_h2_backend import nginx  # noqa: F401 - the h2 backend fixture

pytestmark = pytest.mark.timeout(120)

PROTOCOL_ERROR = 1


def tls_listener(d: Path) -> str:
    return f"""
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
[listener.tls]
enabled = true
certificate = "{d}/default.test.pem"
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory):
    """rproxyd with a plaintext listener (l0, h2c on by default) and a TLS one (alpn default)."""
    d = tmp_path_factory.mktemp("h2")
    certs = make_certs(d)
    with demo_origin() as origin:
        rp = Rproxyd(d, config_text(origin, d / "run", extra=tls_listener(d),
                                    process="workers = 1") + '\n[access_log]\nenabled = true\nfile = "'
                     + str(d / "access.log") + '"\n[admin]\nenabled = true\nbind = "127.0.0.1:0"\n')
        try:
            rp.certs = certs
            rp.tls_port = int(rp.status()["listeners"]["tls"].rsplit(":", 1)[1])
            yield rp
        finally:
            rp.stop()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_curl_prior_knowledge_on_the_plaintext_listener(proxy):
    host, port = proxy.address
    result = curl("--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}", f"http://{host}:{port}/")
    body, _, tail = result.stdout.rpartition("\n")
    assert tail == "2 200", result.stderr
    assert body.encode() == GREETING


def test_curl_negotiates_h2_by_alpn(proxy):
    result = curl("--http2", "--cacert", proxy.certs.path("ca.pem"), "--resolve",
                  f"default.test:{proxy.tls_port}:127.0.0.1", "-w", "\n%{http_version} %{http_code}",
                  f"https://default.test:{proxy.tls_port}/headers")
    body, _, tail = result.stdout.rpartition("\n")
    assert tail == "2 200", result.stderr
    seen = json.loads(body)
    # The backend got an HTTP/1.1 request with the :authority as Host, proto https.
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["host"] == f"default.test:{proxy.tls_port}"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["via"] == "2 rproxyd"  # RFC 9110 7.6.3: HTTP/2 is "2"


def test_httpx_multiplexes_streams_on_one_connection(proxy):
    """Eight concurrent requests from one httpx client: eight streams on one TLS connection.

    With asyncio, not threads: httpcore's sync HTTP/2 connection drives its h2 state machine
    from every calling thread without one lock around stream id, HEADERS and flush, so a
    shared httpx.Client(http2=True) sometimes sends HEADERS out of stream-id order or twice,
    which rproxyd rightly answers with GOAWAY (RFC 9113 section 5.1.1; upstream:
    encode/httpx#3002, now pydantic/httpx2#802)."""
    ctx = client_context(proxy.certs)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ctx.check_hostname = False  # the default certificate names default.test; this is 127.0.0.1
    url = f"https://127.0.0.1:{proxy.tls_port}/"

    async def fetch_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(http2=True, verify=ctx, timeout=30) as client:
            return await asyncio.gather(*(client.get(url) for _ in range(8)))

    results = asyncio.run(fetch_all())
    assert [r.status_code for r in results] == [200] * 8
    assert {r.http_version for r in results} == {"HTTP/2"}
    assert all(r.content == GREETING for r in results)
    # One connection, eight streams on it.
    assert len({id(r.extensions["network_stream"]) for r in results}) == 1
    assert sorted(r.extensions["stream_id"] for r in results) == list(range(1, 16, 2))


def test_h1_and_h2_clients_share_the_tls_listener(proxy):
    reply = https_get(proxy.tls_port, "default.test", client_context(proxy.certs))
    assert (reply.status, reply.alpn) == (200, "http/1.1")
    ctx = client_context(proxy.certs)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    client = H2Client(proxy.tls_port, ctx, "default.test")
    assert client.sock.selected_alpn_protocol() == "h2"
    try:
        assert client.wait(client.request("/", authority="default.test")).status == 200
    finally:
        client.close()
    # And plain HTTP/1.1 on the h2c listener still works.
    status, _, body = get(proxy.address)
    assert (status, body) == (200, GREETING)


def test_h2load_requests_all_succeed(proxy):
    host, port = proxy.address
    result = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "10", f"http://{host}:{port}/"],
                            capture_output=True, text=True, timeout=60, check=False)
    done = "requests: 400 total, 400 started, 400 done, 400 succeeded"
    assert done in result.stdout, result.stdout
    assert "status codes: 400 2xx" in result.stdout, result.stdout


def test_request_and_response_bodies_stream_both_ways(proxy, tmp_path):
    """A 64 MiB upload and download over h2c, neither held whole by the worker."""
    host, port = proxy.address
    upload = tmp_path / "up.bin"
    size = 64 * 1024 * 1024
    with upload.open("wb") as f:
        f.truncate(size)
    result = curl("--http2-prior-knowledge", "--data-binary", f"@{upload}", f"http://{host}:{port}/sink")
    assert result.stdout.strip() == str(size), result.stderr
    # Without a length (chunked to the HTTP/1.1 origin): curl sends no content-length for stdin.
    result = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-T", "-", "-X", "POST",
                             f"http://{host}:{port}/sink"], input=b"y" * 300_000, capture_output=True,
                            timeout=60, check=False)
    assert result.stdout.strip() == b"300000", result.stderr
    download = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{size_download} %{http_version}",
                    f"http://{host}:{port}/bytes/{size}")
    assert download.stdout == f"{size} 2", download.stderr
    worker = proxy.current_workers()[0]["pid"]
    rss_kib = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{worker}/status").read_text())[1])
    assert rss_kib < 200 * 1024, f"worker peak RSS {rss_kib} KiB after 64 MiB each way"


def test_trailers_both_ways_and_cookie_crumbs_joined(proxy):
    _, port = proxy.address
    client = H2Client(port)
    try:
        reply = client.wait(client.request("/trailers"))
        assert reply.status == 200 and reply.trailers, reply
        assert dict(reply.trailers).get(b"x-checksum"), reply.trailers
        sid = client.request("/headers", method="POST", headers=[("cookie", "a=1"), ("cookie", "b=2")],
                             body=b"hello", trailers=[("x-sum", "5")])
        seen = json.loads(bytes(client.wait(sid).body))
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["cookie"] == "a=1; b=2"
        assert headers["host"] == "x"
        assert headers["transfer-encoding"] == "chunked"  # no length: chunked to the origin
    finally:
        client.close()


def test_connection_specific_header_is_refused_and_others_go_on(proxy):
    _, port = proxy.address
    client = H2Client(port, validate=False)
    try:
        bad = client.wait(client.request("/", headers=[("connection", "keep-alive")]))
        assert bad.reset == PROTOCOL_ERROR, bad
        assert client.wait(client.request("/")).status == 200  # same connection, next stream
    finally:
        client.close()


def test_proxy_errors_go_out_on_their_stream_only(proxy):
    _, port = proxy.address
    client = H2Client(port, validate=False)
    try:
        connect = client.request(method="CONNECT", authority="example.test:443")
        fragment = client.request("/a#b")
        ok = client.request("/")
        assert client.wait(connect).status == 405
        assert client.wait(fragment).status == 400
        reply = client.wait(ok)
        assert reply.status == 200 and bytes(reply.body) == GREETING
    finally:
        client.close()

    def connect_record() -> dict | None:
        records = [json.loads(line) for line in (proxy.dir / "access.log").read_text().splitlines()]
        return next((r for r in records if r["method"] == "CONNECT"), None)
    record = wait_for(connect_record, 10, "the CONNECT stream's access-log record")
    assert (record["protocol"], record["status"]) == ("HTTP/2.0", 405)


@pytest.mark.parametrize("restart", ["reload", "upgrade"])
def test_reload_sends_goaway_and_open_streams_complete(proxy, restart):
    """nghttp (nghttp2's client; python-h2 takes any GOAWAY as the end) holds a slow stream open
    across a reload (HUP) or an in-place upgrade (USR2, the re-exec then a new generation): it
    sees the shutdown notice and GOAWAY, and still gets its response.

    The stream must outlast both: the notice goes out when the old generation starts to drain
    (after an upgrade's re-exec, about 1 s after the request here), GOAWAY a drain grace
    (worker.DRAIN_IDLE_GRACE, 1 s) after that. Hence a 4 s response: at 2 s, an upgrade's
    GOAWAY came after the response about half the time."""
    host, port = proxy.address
    generation = proxy.status()["generation"]
    client = subprocess.Popen(["nghttp", "-nv", f"http://{host}:{port}/delay/4"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any(w["generation"] == generation for w in proxy.current_workers()), 5, "running")
        wait_for(lambda: _established(port), 10, "nghttp's connection")
        if restart == "reload":
            result = proxy.reload()
            assert result.returncode == 0, result.stderr
        else:
            upgrades = proxy.log().count("upgraded in place")
            proxy.send(signal.SIGUSR2)
            wait_for(lambda: proxy.log().count("upgraded in place") > upgrades, 15, "the re-exec")
        out, _ = client.communicate(timeout=30)
    finally:
        client.kill()
    stream = re.search(r"send HEADERS frame <.*stream_id=(\d+)>", out)[1]
    goaways = re.findall(r"recv GOAWAY frame.*\n.*last_stream_id=(\d+), error_code=NO_ERROR", out)
    assert goaways == ["2147483647", stream], out  # the shutdown notice, then the last stream id
    assert re.search(rf"recv \(stream_id={stream}\) :status: 200", out), out
    assert re.search(r"recv DATA frame.*\n.*; END_STREAM", out), out
    assert client.returncode == 0, out
    proxy.wait_running(generation + 1)
    assert get(proxy.address)[0] == 200


def _established(port: int) -> bool:
    """Some client connection to `port` is open (nghttp connected and sent its request)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=False).stdout
    return bool(out.strip())


def test_bad_http2_limits_name_file_key_and_problem(tmp_path):
    main = tmp_path / "rproxy.toml"
    main.write_text(config_text(1, tmp_path / "run") + "\n[http2]\nmax_frame_size = 1000\n"
                    "max_concurrent_streams = 0\n")
    result = subprocess.run([sys.executable, "-m", "appliance", "-t", "-c", str(main)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert f"rproxyd: {main}: http2.max_frame_size: " in result.stderr, result.stderr
    assert f"rproxyd: {main}: http2.max_concurrent_streams: " in result.stderr, result.stderr


def test_a_listener_with_h2c_off_answers_the_preface_as_http1(tmp_path):
    with demo_origin() as origin:
        config = config_text(origin, tmp_path / "run", process="workers = 1").replace(
            'bind = "127.0.0.1:0"\n', 'bind = "127.0.0.1:0"\nh2c = false\n', 1)
        rp = Rproxyd(tmp_path, config)
        try:
            host, port = rp.address
            result = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version}",
                          f"http://{host}:{port}/")
            assert result.stdout != "2", result.stdout  # refused as a bad HTTP/1 request, never h2
            assert get(rp.address)[0] == 200
        finally:
            rp.stop()


def test_h2_metrics_count_connections_streams_and_goaways(proxy):
    _, port = proxy.address
    client = H2Client(port)
    try:
        for _ in range(3):
            assert client.wait(client.request("/")).status == 200

        def metrics(check) -> str | None:
            text = httpx.get(f"http://{proxy.status()['admin']}/metrics", timeout=5).text
            return text if check(text) else None
        text = wait_for(lambda: metrics(lambda t: re.search(r"^rproxyd_h2_connections [1-9]", t, re.M)),
                        10, "an open HTTP/2 connection in /metrics")
        assert int(re.search(r"^rproxyd_h2_streams_total (\d+)", text, re.M)[1]) >= 3
    finally:
        client.close()
    wait_for(lambda: metrics(lambda t: re.search(r"^rproxyd_h2_connections 0$", t, re.M)), 10,
             "no open HTTP/2 connection in /metrics")


PHASES = '''
from appliance.phases import Phases


class Upper(Phases):
    def response_filter(self, req, resp, ctx):
        resp.headers.set("X-Phase", req.path)

    def response_body_filter(self, req, chunk, end, ctx):
        return chunk.upper()
'''


def test_the_phases_run_for_h2_streams_body_filter_included(tmp_path):
    module = tmp_path / "upper.py"
    module.write_text(PHASES)
    with demo_origin() as origin:
        rp = Rproxyd(tmp_path, config_text(origin, tmp_path / "run", process="workers = 1")
                     + f'\n[phases]\nmodule = "{module}"\nclass = "Upper"\n')
        try:
            client = H2Client(rp.address[1])
            reply = client.wait(client.request("/bytes/200000"))
            client.close()
        finally:
            rp.stop()
    assert reply.status == 200 and reply.header(b"x-phase") == b"/bytes/200000"
    assert reply.header(b"content-length") is None  # the filter may change the length
    assert bytes(reply.body) == b"X" * 200000


def test_h2_end_to_end_through_to_an_h2_backend(make_proxy, nginx):  # noqa: F811 - the fixture
    """An HTTP/2 client, rproxyd, nginx speaking h2 (the backend side's h2 connections): a
    download and an upload without a length (chunked nowhere: h2 both ways) cross intact."""
    proxy = make_proxy(backends={"h2": [nginx["plain"]]}, backend_options='protocol = "h2"\n')
    expected = (nginx["root"] / "www" / "big.bin").read_bytes()
    client = H2Client(int(proxy.url.rsplit(":", 1)[1]))
    try:
        download = client.wait(client.request("/big.bin"))
        upload = client.wait(client.request("/upload", method="POST", body=b"u" * 300_000))
        proto = client.wait(client.request("/proto", authority="app.test"))
    finally:
        client.close()
    assert download.status == 200 and bytes(download.body) == expected
    assert upload.status == 200 and bytes(upload.body).startswith(b"received ")
    assert bytes(proto.body).split()[:2] == [b"HTTP/2.0", b"app.test"]


def test_request_trailers_reach_an_http1_backend_after_the_chunked_body(make_proxy):
    seen: list[bytes] = []

    def answer(conn, backend) -> None:
        data = b""
        # A chunked body with trailers ends with its last chunk, the trailer lines, a blank line.
        while not (b"\r\n0\r\n" in data and data.endswith(b"\r\n\r\n")):
            piece = conn.recv(65536)
            if not piece:
                return
            data += piece
        seen.append(data)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    backend = ScriptedBackend(answer)
    proxy = make_proxy(backends={"app": [backend.address]})
    client = H2Client(int(proxy.url.rsplit(":", 1)[1]))
    try:
        reply = client.wait(client.request("/up", method="POST", body=b"hello",
                                           trailers=[("x-checksum", "5"), ("content-type", "x")]))
    finally:
        client.close()
        backend.stop()
    assert reply.status == 200 and bytes(reply.body) == b"ok"
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert re.search(rb"(?im)^transfer-encoding: chunked", head)
    # The body, then the allowed trailer (Content-Type may not be one: dropped), then the end.
    assert body == b"5\r\nhello\r\n0\r\nx-checksum: 5\r\n\r\n", body
