"""upstream_peer and response_body_filter on the request path: real rproxyd, real origins, real clients.

Phase modules are written to tmp_path; each test checks what the origin and the client saw.
"""

from __future__ import annotations

import urllib.request
import zlib
from pathlib import Path

import httpx

from tests.support import (
    Origin,
    Proxy,
    ScriptedBackend,
    free_port,
    proxy_config,
    raw_exchange,
    running,
    wait_for,
)
from tests.support.phases import EXAMPLES, phase_module
from tests.support.tls import make_certs
from tests.test_tls import TlsOrigin


def _proxy(tmp_path: Path, port: int, backends: dict[str, list[str]], module: Path,
           phases: str = "") -> Proxy:
    text = proxy_config(port, backends, extra=f'[phases]\nmodule = "{module}"\n{phases}\n')
    return Proxy(tmp_path, text, port)


def test_upstream_peer_to_a_backend_an_address_and_the_routes_choice(tmp_path):
    a, b, c = Origin("a"), Origin("b"), Origin("c")
    module = phase_module(tmp_path, f"""
        from appliance.phases import Phases

        class Site(Phases):
            def upstream_peer(self, req, ctx):
                if req.path == "/to-b":
                    return "b"
                if req.path == "/to-c":
                    return "{c.address}"
                return None
    """)
    port = free_port()
    proxy = _proxy(tmp_path, port, {"a": [a.address], "b": [b.address]}, module)
    with running(a, b, c, proxy), httpx.Client(base_url=proxy.url) as client:
        assert client.get("/").headers["x-origin"] == "a"
        assert client.get("/to-b").headers["x-origin"] == "b"
        assert client.get("/to-c").headers["x-origin"] == "c"  # a pool made on demand
        assert client.get("/to-c").headers["x-origin"] == "c"  # and reused


def test_async_upstream_peer_that_suspends_and_one_that_does_not(tmp_path):
    a, b = Origin("a"), Origin("b")
    module = phase_module(tmp_path, """
        import asyncio
        from appliance.phases import Phases

        class Site(Phases):
            async def upstream_peer(self, req, ctx):
                if req.path in ("/wait", "/echo"):
                    await asyncio.sleep(0.05)
                    return "b"
                return "a"
    """)
    port = free_port()
    proxy = _proxy(tmp_path, port, {"a": [a.address], "b": [b.address]}, module)
    with running(a, b, proxy), httpx.Client(base_url=proxy.url) as client:
        assert client.get("/wait").headers["x-origin"] == "b"
        assert client.get("/").headers["x-origin"] == "a"
        # The body that arrives while the phase waits is kept and sent on.
        reply = client.post("/echo", content=b"x" * 100_000)
        assert (reply.headers["x-origin"], reply.content) == ("b", b"x" * 100_000)


def test_upstream_peer_to_a_tls_peer_with_sni(tmp_path):
    (tmp_path / "certs").mkdir()
    certs = make_certs(tmp_path / "certs")
    origin, a = TlsOrigin(certs), Origin("a")
    module = phase_module(tmp_path, f"""
        from appliance.phases import Peer, Phases

        SECURE = Peer("127.0.0.1:{origin.port}", tls=True, sni="b.test", ca="{certs.path('ca.pem')}")
        WRONG = Peer("127.0.0.1:{origin.port}", tls=True, sni="a.test", ca="{certs.path('ca.pem')}")

        class Site(Phases):
            def upstream_peer(self, req, ctx):
                return WRONG if req.path == "/wrong" else SECURE
    """)
    port = free_port()
    proxy = _proxy(tmp_path, port, {"a": [a.address]}, module)
    try:
        with running(a, proxy), httpx.Client(base_url=proxy.url) as client:
            reply = client.get("/")
            assert (reply.status_code, reply.content) == (200, b"tls")
            assert ("b.test", None) in origin.seen
            assert client.get("/wrong").status_code == 502  # the name does not match the certificate
    finally:
        origin.stop()


def test_a_phase_named_peer_past_max_peer_pools_gets_503(tmp_path):
    a, b, c = Origin("a"), Origin("b"), Origin("c")
    module = phase_module(tmp_path, f"""
        from appliance.phases import Phases

        class Site(Phases):
            def upstream_peer(self, req, ctx):
                return {{"/b": "{b.address}", "/c": "{c.address}"}}.get(req.path)
    """)
    port = free_port()
    proxy = _proxy(tmp_path, port, {"a": [a.address]}, module,
                   'max_peer_pools = 1\npeer_pool_idle_timeout = "0.2s"')
    with running(a, b, c, proxy), httpx.Client(base_url=proxy.url) as client:
        assert client.get("/b").headers["x-origin"] == "b"
        assert client.get("/c").status_code == 503
        assert client.get("/").headers["x-origin"] == "a"  # configured backends are not counted
        # Idle, the first pool is closed: its slot serves another peer.
        wait_for(lambda: client.get("/c").status_code != 503, 10, "the idle peer pool closed")
        assert client.get("/c").headers["x-origin"] == "c"


def test_an_upstream_peer_that_raises_or_returns_junk_gives_500_and_the_worker_serves_on(tmp_path):
    a = Origin("a")
    module = phase_module(tmp_path, """
        import asyncio
        from appliance.phases import Phases

        class Site(Phases):
            async def upstream_peer(self, req, ctx):
                if req.path == "/late":
                    await asyncio.sleep(0.01)
                    raise RuntimeError("late failure")
                return {"/junk": 42, "/nowhere": "no-such-backend"}.get(req.path)
    """)
    port = free_port()
    proxy = _proxy(tmp_path, port, {"a": [a.address]}, module)
    with running(a, proxy), httpx.Client(base_url=proxy.url) as client:
        assert [client.get(p).status_code for p in ("/junk", "/nowhere", "/late")] == [500, 500, 500]
        assert client.get("/").headers["x-origin"] == "a"
    log = proxy.log()
    for said in ("late failure", "expected None, a backend name", "no backend of that name"):
        assert said in log


def _always_503(conn, backend):
    while backend.read_head(conn) is not None:
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")


def _silent(conn, backend):
    backend.read_head(conn)
    conn.recv(1)  # until the proxy gives up


def test_upstream_peer_is_asked_again_before_a_retry(tmp_path):
    first, second, b = ScriptedBackend(_always_503), ScriptedBackend(_always_503), Origin("b")
    module = phase_module(tmp_path, """
        from appliance.phases import Phases

        class Site(Phases):
            def upstream_peer(self, req, ctx):
                ctx["asked"] = ctx.get("asked", 0) + 1
                return "pair" if ctx["asked"] == 1 else "b"
    """)
    port = free_port()
    text = proxy_config(port, {"pair": [first.address, second.address], "b": [b.address]},
                        backend_options="retries = 1\nretry_on_status = [503]\n",
                        extra=f'[phases]\nmodule = "{module}"\n')
    proxy = Proxy(tmp_path, text, port)
    with running(first, second, b, proxy):
        # Without the second question, the retry would go to pair's other server: a 503 again.
        reply = httpx.get(proxy.url + "/")
        assert (reply.status_code, reply.headers["x-origin"]) == (200, "b")
        assert len(first.requests) + len(second.requests) == 1


def test_a_peers_own_read_timeout_applies(tmp_path):
    silent, a = ScriptedBackend(_silent), Origin("a")
    module = phase_module(tmp_path, f"""
        from appliance.phases import Peer, Phases

        SLOW = Peer("{silent.address}", read_timeout=0.3)

        class Site(Phases):
            def upstream_peer(self, req, ctx):
                return SLOW
    """)
    port = free_port()
    proxy = _proxy(tmp_path, port, {"a": [a.address]}, module)  # the backend default: 60 s
    with running(silent, a, proxy):
        assert httpx.get(proxy.url + "/", timeout=20).status_code == 504


BODY_FILTER = """
    from appliance.phases import Phases

    class Site(Phases):
        def response_body_filter(self, req, chunk, end, ctx):
            if req.query == "hold":  # everything held back, sent reversed at the end
                ctx["held"] = ctx.get("held", b"") + chunk
                return ctx["held"][::-1] if end else b""
            return chunk.upper() + (b"<END>" if end else b"")
"""


def test_a_body_filter_reframes_content_length_and_chunked_bodies(tmp_path):
    a = Origin("a")
    module = phase_module(tmp_path, BODY_FILTER)
    port = free_port()
    # With splice on, a large body to an HTTP/1.0 client would be relayed by splice(2): not here.
    proxy = _proxy(tmp_path, port, {"a": [a.address]}, module, "[proxy]\nsplice_min_bytes = 16384")
    with running(a, proxy), httpx.Client(base_url=proxy.url) as client:
        for path in ("/bytes/300000", "/chunked/300000", "/"):
            original = urllib.request.urlopen(f"http://{a.address}{path}").read()
            reply = client.get(path)
            assert reply.status_code == 200
            assert "content-length" not in reply.headers
            assert reply.headers["transfer-encoding"] == "chunked"
            assert reply.content == original.upper() + b"<END>"
        # The connection stayed usable through all three.
        assert client.get("/").content.endswith(b"<END>")
        # A filter that returns b"" until the end: nothing (no empty chunk) goes out before it.
        original = urllib.request.urlopen(f"http://{a.address}/chunked/100000").read()
        assert client.get("/chunked/100000?hold").content == original[::-1]
        # HTTP/1.0 has no chunked: the body ends with the close.
        raw = raw_exchange(port, b"GET /bytes/300000 HTTP/1.0\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower()
        assert b"connection: close" in head.lower()
        assert body == urllib.request.urlopen(f"http://{a.address}/bytes/300000").read().upper() + b"<END>"
        # HEAD: no body to filter, and no Content-Length that a filtered GET would not match.
        reply = client.head("/bytes/1000")
        assert reply.status_code == 200 and "content-length" not in reply.headers


def test_a_raising_body_filter_cuts_the_response_and_the_worker_serves_on(tmp_path):
    a = Origin("a")
    module = phase_module(tmp_path, """
        from appliance.phases import Phases

        class Site(Phases):
            def response_body_filter(self, req, chunk, end, ctx):
                if req.query == "boom":
                    raise RuntimeError("filter failed")
                return chunk
    """)
    port = free_port()
    proxy = _proxy(tmp_path, port, {"a": [a.address]}, module)
    with running(a, proxy):
        raw = raw_exchange(port, b"GET /?boom HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200") and not raw.endswith(b"0\r\n\r\n")
        assert httpx.get(proxy.url + "/").status_code == 200
        assert "filter failed" in proxy.log()


def test_examples_canary_and_ab_cookie(tmp_path):
    stable, canary, app_b = Origin("stable"), Origin("canary"), Origin("b")
    source = (EXAMPLES / "canary.py").read_text().replace("127.0.0.1:9090", canary.address)
    canary_module = tmp_path / "canary.py"
    canary_module.write_text(source)
    backends = {"app": [stable.address], "app_b": [app_b.address]}
    with running(stable, canary, app_b):
        port = free_port()
        with running(_proxy(tmp_path, port, backends, canary_module)), \
                httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/").headers["x-origin"] == "stable"
            assert client.get("/", headers={"X-Canary": "1"}).headers["x-origin"] == "canary"
        port = free_port()
        with running(_proxy(tmp_path, port, backends, EXAMPLES / "ab_cookie.py")), \
                httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/", headers={"Cookie": "ab=b"}).headers["x-origin"] == "b"
            reply = client.get("/", headers={"Cookie": "ab=a"})
            assert (reply.headers["x-origin"], reply.headers.get("set-cookie")) == ("stable", None)
            # No cookie: a group by the address's hash, kept by the cookie the response sets.
            group = "b" if zlib.crc32(b"127.0.0.1") % 100 < 10 else "a"
            reply = client.get("/")
            assert reply.headers["x-origin"] == {"a": "stable", "b": "b"}[group]
            assert reply.headers["set-cookie"].startswith(f"ab={group}; Path=/")


def test_example_body_replace(tmp_path):
    a = Origin("a")
    port = free_port()
    proxy = _proxy(tmp_path, port, {"app": [a.address]}, EXAMPLES / "body_replace.py")
    old, new = b"http://app.internal:8080/", b"https://www.example.com/"
    # Many occurrences over a body larger than one read, so some fall across two chunks.
    page = b"".join(b"<a href='%spage/%d'>%d</a>\n" % (old, i, i) for i in range(20000))
    with running(a, proxy), httpx.Client(base_url=proxy.url) as client:
        reply = client.post("/echo", content=page, headers={"Content-Type": "text/html"})
        assert reply.content == page.replace(old, new)
        assert reply.headers["transfer-encoding"] == "chunked" and "content-length" not in reply.headers
        # Not HTML: passed through as it came (re-framed all the same, since the class filters).
        reply = client.post("/echo", content=page, headers={"Content-Type": "text/plain"})
        assert reply.content == page
