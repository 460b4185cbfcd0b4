"""Access log, error log, request ids, metrics and the admin endpoints, with real traffic."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from appliance.http.downstream import LINGER_SECONDS
from tests.support import curl, read_all, wait_connected_to, wait_for
from tests.support.tls import Certs, client_context, https_get, make_certs
from tests.support_proc import Rproxyd, config_text, get

pytestmark = pytest.mark.timeout(90)


def start(tmp_path: Path, origin_port: int, workers: int = 1, log: str = "",
          admin: str = 'bind = "127.0.0.1:0"',
          access: str = "", tables: str = "") -> Rproxyd:
    """rproxyd with the access log in tmp_path/access.log and the admin listener on a free port.

    `log` and `access` add keys to those tables, `admin` is the [admin] table's keys
    besides `enabled`, and `tables` adds whole tables.
    """
    (tmp_path / "run").mkdir(exist_ok=True)
    return Rproxyd(tmp_path, config_text(origin_port, tmp_path / "run", process=f"workers = {workers}",
                                         extra=f"""{log}
[access_log]
enabled = true
file = "{tmp_path}/access.log"
flush_interval = "20ms"
{access}

[admin]
enabled = true
{admin}

{tables}
"""))


def records(path: Path, count: int) -> list[dict]:
    """The access log's records, once there are at least `count`."""
    def enough() -> list[dict] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines] if len(lines) >= count else None
    return wait_for(enough, 10, f"{count} access log records")


def admin(proxy: Rproxyd, path: str) -> httpx.Response:
    return httpx.get(f"http://{proxy.status()['admin']}{path}", timeout=5)


def admin_port(proxy: Rproxyd) -> int:
    return int(proxy.status()["admin"].rsplit(":", 1)[1])


def healthz_status(port: int, host: str = "127.0.0.1", source: str | None = None) -> int:
    """Status of GET /healthz on the admin port, sent from `source` when given."""
    with socket.create_connection((host, port), timeout=5,
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def until_metrics(proxy: Rproxyd, check: Callable[[str], bool], what: str) -> str:
    """/metrics once `check` holds for it (workers publish every 0.5 s)."""
    def scrape() -> str | None:
        text = admin(proxy, "/metrics").text
        return text if check(text) else None
    return wait_for(scrape, 10, what)


def metric_sum(text: str, name: str, **match: str) -> float:
    """Sum of a family's samples whose labels include `match`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in match.items()):
            total += float(value)
    return total


def test_access_log_fields_and_request_id(tmp_path: Path, origin_port: int) -> None:
    proxy = start(tmp_path, origin_port, tables='[proxy]\ntrusted_proxies = ["10.0.0.0/8"]\n')
    try:
        base = "http://{}:{}".format(*proxy.address)
        with httpx.Client(base_url=base, timeout=5) as client:
            seen = client.get("/headers?x=1", headers={"X-Request-Id": "spoofed"})
            assert seen.status_code == 200
            missing = client.get("/nothing-here")
        sent = dict((k.lower(), v) for k, v in seen.json()["headers"])
        # Not a trusted proxy: the client's id is replaced, and the backend gets ours.
        assert sent["x-request-id"] != "spoofed" and len(sent["x-request-id"]) == 32
        first, second = records(tmp_path / "access.log", 2)
        assert first["request_id"] == sent["x-request-id"]
        assert first["method"] == "GET" and first["path"] == "/headers?x=1"
        assert first["protocol"] == "HTTP/1.1" and first["status"] == 200
        assert first["vhost"] == "default" and first["rule"] == "default[0]"
        assert first["backend"] == "demo" and first["server"] == f"127.0.0.1:{origin_port}"
        assert first["client"].startswith("127.0.0.1:")
        assert first["bytes_out"] == len(seen.content) + _head_length(seen)
        assert first["bytes_in"] > 0
        assert first["duration"] >= first["upstream_time"] >= first["first_byte_time"] >= 0
        assert first["tls_version"] is None and first["tls_resumed"] is None
        assert first["time"].endswith("Z")
        assert second["status"] == missing.status_code and second["request_id"] != first["request_id"]
    finally:
        proxy.stop()


def _head_length(response: httpx.Response) -> int:
    # What the proxy wrote: status line, headers as sent (httpx keeps raw order and case).
    lines = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
    lines += [f"{k.decode()}: {v.decode()}" for k, v in response.headers.raw]
    return len("\r\n".join(lines)) + 4


def test_trusted_request_id_kept_and_error_log_carries_it(tmp_path: Path, origin_port: int) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    proxy = start(tmp_path, origin_port, log='format = "json"', tables=f"""
[backend.dead]
servers = ["127.0.0.1:{dead_port}"]
retries = 0

[[vhost]]
name = "broken"
hosts = ["broken.test"]
access_log = false

[[vhost.route]]
backend = "dead"

[[vhost]]
name = "quiet"
hosts = ["quiet.test"]

[[vhost.route]]
backend = "dead"
""")
    try:
        base = "http://{}:{}".format(*proxy.address)
        with httpx.Client(base_url=base, timeout=5) as client:
            kept = client.get("/headers", headers={"X-Request-Id": "from-trusted-lb"})
            # 502 or 503: the dead server's failed connect may already have marked it down.
            assert client.get("/", headers={"Host": "broken.test"}).status_code in (502, 503)
            failed = client.get("/", headers={"Host": "quiet.test", "X-Request-Id": "lb-42"})
            assert failed.status_code in (502, 503)
        assert dict((k.lower(), v) for k, v in kept.json()["headers"])["x-request-id"] == "from-trusted-lb"
        logged = records(tmp_path / "access.log", 2)
        # The vhost with access_log = false wrote nothing.
        assert [r["vhost"] for r in logged] == ["default", "quiet"]
        assert logged[1]["request_id"] == "lb-42"
        def error_lines() -> list[dict]:
            lines = [json.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
            return [line for line in lines if line.get("request_id") == "lb-42"]
        found = wait_for(error_lines, 10, "an error line with the request id")
        assert found[0]["level"] == "WARNING" and str(failed.status_code) in found[0]["message"]
    finally:
        proxy.stop()


def _tls_listener(tmp_path: Path) -> tuple[Certs, str]:
    """Certificates made in tmp_path, and a [[listener]] table serving a.test over TLS."""
    (tmp_path / "certs").mkdir()
    certs = make_certs(tmp_path / "certs")
    return certs, f"""
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
[listener.tls]
enabled = true
certificate = "{certs.path('a.test.pem')}"
"""


def test_access_log_tls_fields(tmp_path: Path, origin_port: int) -> None:
    certs, listener = _tls_listener(tmp_path)
    proxy = start(tmp_path, origin_port, tables=listener + """
[[vhost]]
name = "a"
hosts = ["a.test"]
[vhost.ssl_headers]
cipher = true
protocol = true
[[vhost.route]]
backend = "demo"
""")
    try:
        port = int(proxy.status()["listeners"]["tls"].rsplit(":", 1)[1])
        ctx = client_context(certs)
        full = https_get(port, "a.test", ctx, path="/headers")
        resumed = https_get(port, "a.test", ctx, path="/headers?again", session=full.session)
        assert (full.status, full.reused, resumed.status, resumed.reused) == (200, False, 200, True)
        first, second = records(tmp_path / "access.log", 2)
        # What the backend was told in X-SSL-* headers, from the same SSL object.
        told = dict((k.lower(), v) for k, v in json.loads(full.body)["headers"])
        assert first["tls_version"] == full.version == told["x-ssl-protocol"]
        assert first["tls_cipher"] == told["x-ssl-cipher"] and first["tls_cipher"]
        assert (first["tls_resumed"], second["tls_resumed"]) == (False, True)
        assert second["tls_version"] == resumed.version and second["tls_cipher"] == first["tls_cipher"]
        assert first["host"] == "a.test" and first["vhost"] == "a"
    finally:
        proxy.stop()


def test_access_log_client_address_over_tls(tmp_path: Path, origin_port: int) -> None:
    """The client address is taken when the connection is made: by the time a batch is written
    the TLS transport no longer reports its peer, least of all for a client already gone."""
    certs, listener = _tls_listener(tmp_path)
    proxy = start(tmp_path, origin_port, tables=listener)
    try:
        port = int(proxy.status()["listeners"]["tls"].rsplit(":", 1)[1])
        result = curl("--cacert", certs.path("trust.pem"), "--resolve", f"a.test:{port}:127.0.0.1",
                      "-o", "/dev/null", "-w", "%{http_code} %{local_port}", f"https://a.test:{port}/?curl")
        assert result.returncode == 0, result.stderr
        status, curl_port = result.stdout.decode().split()
        assert status == "200"
        # A client that closes right after its request, before the answer (logged as 499).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client_context(certs).wrap_socket(raw, server_hostname="a.test") as sock:
            sock.sendall(b"GET /delay/0.2?gone HTTP/1.1\r\nHost: a.test\r\n\r\n")
            gone_port = sock.getsockname()[1]
        logged = {r["path"]: r for r in records(tmp_path / "access.log", 2)}
        assert logged["/?curl"]["client"] == f"127.0.0.1:{curl_port}"
        assert logged["/delay/0.2?gone"]["status"] == 499
        assert logged["/delay/0.2?gone"]["client"] == f"127.0.0.1:{gone_port}"
    finally:
        proxy.stop()


def test_access_log_to_stdout(tmp_path: Path, origin_port: int) -> None:
    proxy = start(tmp_path, origin_port, access='destination = "stdout"\nfields = ["status", "path"]')
    try:
        assert get(proxy.address, "/?stdout=1")[0] == 200
        # Rproxyd sends the process's standard output to stderr.log; the error log has its own file.
        def logged() -> list[dict]:
            lines = (tmp_path / "stderr.log").read_text().splitlines()
            return [json.loads(line) for line in lines if line.startswith("{")]
        assert wait_for(logged, 10, "a record on standard output") == [{"status": 200, "path": "/?stdout=1"}]
        assert not (tmp_path / "access.log").exists()
    finally:
        proxy.stop()


def test_usr1_reopens_access_log(tmp_path: Path, origin_port: int) -> None:
    proxy = start(tmp_path, origin_port, workers=2)
    try:
        log = tmp_path / "access.log"
        for _ in range(10):
            assert get(proxy.address)[0] == 200
        records(log, 10)
        rotated = tmp_path / "access.log.1"
        log.rename(rotated)
        proxy.send(signal.SIGUSR1)
        # Every worker reopens: its next records land in a new file, none in the old one.
        wait_for(lambda: proxy.log().count("log files reopened") >= 3, 10, "every process reopened")
        for _ in range(20):
            assert get(proxy.address)[0] == 200
        assert len(records(log, 20)) == 20
        assert len(rotated.read_text().splitlines()) == 10
    finally:
        proxy.stop()


def test_metrics_sum_over_workers_and_survive_reload(tmp_path: Path, origin_port: int) -> None:
    proxy = start(tmp_path, origin_port, workers=2)
    try:
        sent = 40
        for i in range(sent):  # fresh connections: the kernel spreads them over both workers
            assert get(proxy.address, f"/?n={i}")[0] == 200
        # Workers publish their counts every 0.5 s (appliance/observe/recorder.py).
        text = counted(proxy, sent)
        assert metric_sum(text, "rproxyd_request_duration_seconds_count", vhost="default") == sent
        assert metric_sum(text, "rproxyd_upstream_response_seconds_count", backend="demo") == sent
        assert metric_sum(text, "rproxyd_backend_server_up", backend="demo") == 2
        assert metric_sum(text, "rproxyd_workers") == 2
        # Both workers served some: the sum is not one worker's count.
        per_worker = records(tmp_path / "access.log", sent)
        assert len({r["request_id"][:16] for r in per_worker}) == 2
        assert proxy.reload().returncode == 0
        proxy.wait_running(generation=2)
        for _ in range(10):
            assert get(proxy.address)[0] == 200
        # The old generation's workers are gone; their counts were kept.
        wait_for(lambda: len(proxy.status()["workers"]) == 2, 15, "old workers gone")
        text = counted(proxy, sent + 10)
        assert metric_sum(text, "rproxyd_reloads_total", result="ok") == 1
        assert metric_sum(text, "rproxyd_generation") == 2
        status = admin(proxy, "/status").json()
        assert status["generation"] == 2 and len(status["workers"]) == 2
        assert {w["cpu"] is not None for w in status["workers"]} == {True}
        assert status["backends"]["demo"][0]["healthy"] is True
        assert admin(proxy, "/healthz").status_code == 200
        # The in-place upgrade hands the region over: totals carry on in the new image.
        proxy.send(signal.SIGUSR2)
        wait_for(lambda: "upgraded in place" in proxy.log(), 15, "the re-exec")
        proxy.wait_running(generation=3)
        for _ in range(5):
            assert get(proxy.address)[0] == 200
        wait_for(lambda: len(proxy.status()["workers"]) == 2, 15, "adopted workers gone")
        text = counted(proxy, sent + 15)
        assert metric_sum(text, "rproxyd_reloads_total", result="ok") == 2
    finally:
        proxy.stop()


def counted(proxy: Rproxyd, requests: int) -> str:
    """/metrics once it counts `requests` answered with 2xx (and not more)."""
    def scrape() -> str | None:
        text = admin(proxy, "/metrics").text
        done = metric_sum(text, "rproxyd_requests_total", vhost="default", code="2xx")
        assert done <= requests
        return text if done == requests else None
    return wait_for(scrape, 10, f"{requests} requests counted")


def send(address: tuple[str, int], path: str, host: str, method: str = "GET",
         body: bytes = b"") -> tuple[int, int, int]:
    """One request on a fresh connection: (status, bytes the proxy counts as received, bytes it sent).

    Received bytes are counted as the target, each header field as name + value + 4
    (": " and CRLF), and the body (see FIELDS["bytes_in"] in appliance/observe/accesslog.py).
    """
    fields = [("Host", host), ("Content-Length", str(len(body))), ("Connection", "close")]
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    received = len(path) + sum(len(n) + len(v) + 4 for n, v in fields) + len(body)
    return int(data.split(b" ", 2)[1]), received, len(data)


def test_metrics_bytes_connection_states_and_pending_queue(tmp_path: Path, origin_port: int) -> None:
    """Two backend connections: one opened at start, the other down until demand opens it;
    both active, a request waits and times out, another waits and is served. Bytes and the
    access log's timing fields agree with what was sent."""
    proxy = start(tmp_path, origin_port, tables=f"""
[backend.slow]
servers = ["127.0.0.1:{origin_port}"]
connections = 2

[[vhost]]
name = "slow"
hosts = ["slow.test"]

[[vhost.route]]
backend = "slow"

[limits]
pending_timeout = "1500ms"
""")
    server = dict(backend="slow", server=f"127.0.0.1:{origin_port}")

    def connections(text: str) -> tuple[float, ...]:
        """(idle, active, connecting, down)"""
        return tuple(metric_sum(text, "rproxyd_backend_connections", state=state, **server)
                     for state in ("idle", "active", "connecting", "down"))

    def pending(text: str) -> float:
        return metric_sum(text, "rproxyd_pending_requests", backend="slow")

    def request(path: str) -> concurrent.futures.Future[tuple[int, int, int]]:
        return pool.submit(send, proxy.address, path, "slow.test")

    try:
        sent = [send(proxy.address, "/echo", "slow.test", "POST", b"x" * 1000),
                send(proxy.address, "/?second", "slow.test")]
        # The pool opens one connection per server at start; the second is not needed yet.
        until_metrics(proxy, lambda t: connections(t) == (1, 0, 0, 1), "one connection idle, one down")
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            busy = [request("/delay/3?a")]
            time.sleep(0.2)  # one takes the idle connection, the other opens the second
            busy.append(request("/delay/3?b"))
            until_metrics(proxy, lambda t: connections(t) == (0, 2, 0, 0), "both connections active")
            queued = request("/?queued")
            until_metrics(proxy, lambda t: pending(t) == 1, "one request pending")
            sent.append(queued.result())
            assert sent[-1][0] == 503
            until_metrics(proxy, lambda t: pending(t) == 0 and metric_sum(
                t, "rproxyd_pending_timeouts_total", backend="slow") == 1, "the pending timeout counted")
            sent += [future.result() for future in busy]
            until_metrics(proxy, lambda t: connections(t) == (2, 0, 0, 0), "both connections idle")
            # Now one that waits less than pending_timeout and is served.
            short = [request("/delay/1?a"), request("/delay/1?b")]
            time.sleep(0.3)  # both connections busy
            sent += [send(proxy.address, "/?waited", "slow.test")] + [future.result() for future in short]
        assert [s[0] for s in sent] == [200, 200, 503, 200, 200, 200, 200, 200]
        text = until_metrics(proxy, lambda t: metric_sum(t, "rproxyd_requests_total", vhost="slow") == 8,
                             "eight requests counted")
        assert metric_sum(text, "rproxyd_requests_total", vhost="slow", code="5xx") == 1
        assert metric_sum(text, "rproxyd_received_bytes_total", vhost="slow") == sum(s[1] for s in sent)
        assert metric_sum(text, "rproxyd_sent_bytes_total", vhost="slow") == sum(s[2] for s in sent)
        logged = {r["path"]: r for r in records(tmp_path / "access.log", 8)}
        assert [logged[p]["bytes_in"] for p in ("/echo", "/?second")] == [s[1] for s in sent[:2]]
        assert {r["host"] for r in logged.values()} == {"slow.test"}
        # One of the two took the idle connection at once; the other waited in the queue for
        # the connection opened for it, at least as long as the connect took.
        busy_records = [logged["/delay/3?a"], logged["/delay/3?b"]]
        assert min(r["queue_wait"] for r in busy_records) == 0
        assert all(0 <= r["connect_time"] <= r["queue_wait"] < 1 for r in busy_records)
        # Requests on a connection that had served one before report no connect time.
        assert [logged[p]["connect_time"] for p in ("/?second", "/?waited")] == [0, 0]
        assert 0.4 < logged["/?waited"]["queue_wait"] < 1.5
        # Every request the access log shows waiting is in the histogram. (The timed-out one
        # logs queue_wait 0 today: the pool does not add the wait of an expired request.)
        waited = [r["queue_wait"] for r in logged.values() if r["queue_wait"] > 0]
        assert metric_sum(text, "rproxyd_pending_wait_seconds_count", backend="slow") == len(waited)
        assert metric_sum(text, "rproxyd_pending_wait_seconds_sum", backend="slow") == pytest.approx(
            sum(waited), abs=1e-5 * len(waited))
    finally:
        proxy.stop()


def test_connection_closed_by_the_client_is_not_kept_lingering(tmp_path: Path, origin_port: int) -> None:
    """A lingering close reads on after our FIN so a client still sending gets no reset; once the
    client has sent its own FIN there is nothing left to protect: the socket closes at once
    (it used to stay open LINGER_SECONDS, counted in rproxyd_client_connections)."""
    proxy = start(tmp_path, origin_port)
    try:
        worker = proxy.current_workers()[0]["pid"]
        url = "http://{}:{}/".format(*proxy.address)
        wait_connected_to([origin_port])  # the warm backend connection is part of the baseline
        baseline = len(os.listdir(f"/proc/{worker}/fd"))
        for _ in range(100):
            result = curl("-o", "/dev/null", "-w", "%{http_code}", url)  # closes after its answer
            assert result.stdout == b"200", result
        # Bounded well below LINGER_SECONDS: before the fix the last connections were still open.
        wait_for(lambda: len(os.listdir(f"/proc/{worker}/fd")) == baseline, LINGER_SECONDS * 0.75,
                 "the worker's descriptors back to their baseline")
        until_metrics(proxy, lambda t: metric_sum(t, "rproxyd_client_connections") == 0,
                      "no client connection counted")
    finally:
        proxy.stop()


def test_metrics_count_worker_restarts_and_keep_the_dead_workers_counts(
        tmp_path: Path, origin_port: int) -> None:
    proxy = start(tmp_path, origin_port)
    try:
        for _ in range(5):
            assert get(proxy.address)[0] == 200
        counted(proxy, 5)  # published to the worker's slot before it dies
        (victim,) = proxy.current_workers()
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced() -> bool:
            workers = proxy.current_workers()
            return [w["state"] for w in workers] == ["accepting"] and workers[0]["pid"] != victim["pid"]
        wait_for(replaced, 15, "a new worker accepting")
        for _ in range(3):
            assert get(proxy.address)[0] == 200
        text = counted(proxy, 8)
        assert metric_sum(text, "rproxyd_worker_restarts_total") == 1
        assert metric_sum(text, "rproxyd_workers") == 1
        # A reload drains workers on purpose: not a restart.
        assert proxy.reload().returncode == 0
        wait_for(lambda: len(proxy.status()["workers"]) == 1, 15, "the old worker gone")
        assert metric_sum(admin(proxy, "/metrics").text, "rproxyd_worker_restarts_total") == 1
    finally:
        proxy.stop()


def test_admin_refuses_clients_outside_allow(tmp_path: Path, origin_port: int) -> None:
    proxy = start(tmp_path, origin_port, admin='bind = "127.0.0.1:0"\nallow = ["10.0.0.0/8"]')
    try:
        refused = admin(proxy, "/metrics")
        assert refused.status_code == 403 and "rproxyd_" not in refused.text
    finally:
        proxy.stop()
    proxy = start(tmp_path, origin_port)
    try:
        assert admin(proxy, "/healthz").status_code == 200
        assert admin(proxy, "/nowhere").status_code == 404
        assert httpx.post(f"http://{proxy.status()['admin']}/metrics", timeout=5).status_code == 405
    finally:
        proxy.stop()


def test_admin_default_allow_is_loopback_only_and_allow_widens_it(tmp_path: Path, origin_port: int) -> None:
    """Bound to every address, a client reaching it over a non-loopback address is refused
    until `allow` names it."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a source address
            local = probe.getsockname()[0]
    except OSError:
        local = "127.0.0.1"
    if local.startswith("127."):
        pytest.skip("no non-loopback IPv4 address on this host")
    proxy = start(tmp_path, origin_port, admin='bind = "0.0.0.0:0"')
    try:
        port = admin_port(proxy)
        assert healthz_status(port) == 200
        assert healthz_status(port, local) == 403
        text = proxy.config_path.read_text()
        proxy.config_path.write_text(text.replace(
            'bind = "0.0.0.0:0"', f'bind = "0.0.0.0:0"\nallow = ["127.0.0.0/8", "{local}/32"]'))
        assert proxy.reload().returncode == 0
        # A changed [admin] table rebinds the listener: port 0 picks a new port.
        port = wait_for(lambda: admin_port(proxy) != port and admin_port(proxy), 10, "the new admin port")
        assert healthz_status(port, local) == 200
        assert healthz_status(port) == 200
    finally:
        proxy.stop()


def test_admin_dual_stack_bind_checks_ipv4_clients_by_their_ipv4_address(
        tmp_path: Path, origin_port: int) -> None:
    """On "[::]" an IPv4 client arrives as ::ffff:a.b.c.d; `allow` sees a.b.c.d."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    proxy = start(tmp_path, origin_port, admin='bind = "[::]:0"\nallow = ["127.0.0.2/32"]')
    try:
        port = admin_port(proxy)
        assert healthz_status(port, "127.0.0.1", source="127.0.0.2") == 200
        assert healthz_status(port, "127.0.0.1") == 403
        assert healthz_status(port, "::1") == 403
    finally:
        proxy.stop()
    proxy = start(tmp_path, origin_port, admin='bind = "[::]:0"')
    try:
        port = admin_port(proxy)
        # The default allow list: IPv4 loopback scrapers are admitted on a dual-stack bind too.
        assert healthz_status(port, "127.0.0.1") == 200
        assert healthz_status(port, "::1") == 200
    finally:
        proxy.stop()


def test_access_log_to_syslog(tmp_path: Path, origin_port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(10)
        proxy = start(tmp_path, origin_port, access=f"""
destination = "syslog"
syslog_address = "127.0.0.1:{sink.getsockname()[1]}"
syslog_facility = "local3"
fields = ["status", "path", "request_id"]
""")
        try:
            assert get(proxy.address, "/?syslog=1")[0] == 200
            datagram = sink.recv(65536).decode()
            # <PRI>: facility local3 (19) * 8 + info (6) = 158.
            assert datagram.startswith("<158>rproxyd-access: {")
            record = json.loads(datagram.split(": ", 1)[1].rstrip("\x00"))
            assert list(record) == ["status", "path", "request_id"] and record["path"] == "/?syslog=1"
        finally:
            proxy.stop()


def assert_sampled(proxy: Rproxyd, line_text: str, events: str, total: int) -> None:
    """The error log accounts for `total` events: some lines one by one (10 a second per worker,
    so a burst spanning a few seconds has at most 30), the rest in "N more EVENTS" summaries."""
    def sampled() -> tuple[int] | None:
        lines = proxy.log().splitlines()
        single = sum(line_text in line for line in lines)
        summarised = sum(int(line.split(f" more {events} ")[0].rsplit(" ", 1)[1])
                         for line in lines if f" more {events} " in line)
        return (single,) if single + summarised == total else None
    (single,) = wait_for(sampled, 10, f"every one of {total} {events} logged singly or in a summary line")
    assert single <= 3 * 10


def test_a_burst_of_header_timeouts_is_counted_and_its_log_lines_sampled(tmp_path: Path,
                                                                          origin_port: int) -> None:
    """Many clients stall inside their request heads and time out together: each gets its 408,
    the metric counts every one, and the error log holds a few of the lines plus a summary
    that accounts for the rest (a line each would be a synchronous write each)."""
    slow = 300
    proxy = start(tmp_path, origin_port, tables='[limits]\nheader_timeout = "1s"\n')
    try:
        socks = [socket.create_connection(proxy.address, timeout=10) for _ in range(slow)]
        try:
            for sock in socks:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            answers = [read_all(sock, 10) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 408 Request Timeout"] * slow
        text = until_metrics(proxy, lambda t: metric_sum(t, "rproxyd_client_timeouts_total") == slow,
                             f"{slow} timeouts counted")
        assert metric_sum(text, "rproxyd_client_timeouts_total", phase="header") == slow
        assert_sampled(proxy, "408 request head timed out", "client timeouts", slow)
    finally:
        proxy.stop()


def test_a_flood_of_pending_timeouts_is_answered_counted_and_sampled(tmp_path: Path,
                                                                     origin_port: int) -> None:
    """Every connection to the backend is busy and the queue behind it times out together:
    each queued request gets its 503, the metric counts every one, and the error log holds a
    few of the WARNING lines plus summaries that account for the rest."""
    clients = 200
    connections = 32  # the default per server per worker: at most that many are served
    proxy = start(tmp_path, origin_port, tables='[limits]\npending_timeout = "1s"\n')
    try:
        socks = [socket.create_connection(proxy.address, timeout=15) for _ in range(clients)]
        try:
            for sock in socks:
                sock.sendall(b"GET /delay/4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            answers = [read_all(sock, 15).split(b"\r\n", 1)[0] for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        counts = collections.Counter(answers)
        queued = counts[b"HTTP/1.1 503 Service Unavailable"]
        assert counts[b"HTTP/1.1 200 OK"] + queued == clients and queued >= clients - connections
        until_metrics(proxy, lambda t: metric_sum(t, "rproxyd_pending_timeouts_total") == queued,
                      f"{queued} pending timeouts counted")
        assert_sampled(proxy, "503 pending timeout", "pending timeouts", queued)
    finally:
        proxy.stop()
