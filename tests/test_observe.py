"""Access log, error log, request ids, metrics and the admin endpoints, with real traffic."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support_proc import Rproxyd, config_text, demo_origin, get, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def origin_port() -> Iterator[int]:
    with demo_origin() as port:
        yield port


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


def test_admin_default_allow_is_loopback_only(tmp_path: Path, origin_port: int) -> None:
    """Bound to every address, a client reaching it over a non-loopback address is refused."""
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
        port = int(proxy.status()["admin"].rsplit(":", 1)[1])
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://{local}:{port}/healthz", timeout=5).status_code == 403
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
