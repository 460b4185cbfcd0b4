"""Idle keep-alive connections compacted into IdleClients (appliance/http/idle.py, issue 15):
a connection idle past the compaction delay keeps what its next request needs (the peer
address and X-Forwarded-For, the TLS session's X-SSL-* lines, a PROXY header's client),
still times out, closes when the client closes it, is closed by a graceful drain, and is
counted in the metrics. Real rproxyd, real demo origin, real clients (http.client)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_for
from tests.support.tls import Certs, client_context, make_certs
from tests.support_proc import Rproxyd, config_text, demo_origin
from tests.test_observe import admin, metric_sum

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def origin_port() -> Iterator[int]:
    with demo_origin() as port:
        yield port


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def start(tmp_path: Path, origin_port: int, certs: Certs, limits: str = "") -> Rproxyd:
    """Listeners l0 (plain), tls (client certificates required, X-SSL-* lines) and pp (PROXY
    protocol); 127.0.0.1 a trusted proxy; the admin listener for /metrics."""
    (tmp_path / "run").mkdir(exist_ok=True)
    return Rproxyd(tmp_path, config_text(origin_port, tmp_path / "run", extra=f"""
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
[listener.tls]
enabled = true
certificate = "{certs.path('b.test.pem')}"

[[listener]]
name = "pp"
bind = "127.0.0.1:0"
proxy_protocol = true

[[vhost]]
name = "b"
hosts = ["b.test"]
certificate = "{certs.path('b.test.pem')}"
client_verify = "required"
client_ca = "{certs.path('ca.pem')}"
[vhost.ssl_headers]
subject = true
serial = true
[[vhost.route]]
backend = "demo"

[proxy]
trusted_proxies = ["127.0.0.1/32"]

[limits]
{limits}

[admin]
enabled = true
bind = "127.0.0.1:0"
"""))


def port_of(proxy: Rproxyd, listener: str) -> int:
    return int(proxy.status()["listeners"][listener].rsplit(":", 1)[1])


def gauges(proxy: Rproxyd) -> tuple[float, float]:
    """(open client connections, of those compacted while idle)."""
    text = admin(proxy, "/metrics").text
    return (metric_sum(text, "rproxyd_client_connections"),
            metric_sum(text, "rproxyd_client_connections_waiting"))


def until_gauges(proxy: Rproxyd, expected: tuple[float, float], what: str) -> None:
    """Workers publish every 0.5 s; a connection compacts 0.1 s after its last response."""
    wait_for(lambda: gauges(proxy) == expected, 10, what)


def headers_seen(conn: http.client.HTTPConnection, extra: dict[str, str] | None = None,
                 host: str = "x") -> dict[str, str]:
    """GET /headers on this (kept-alive) connection: the headers the origin got, lower-cased."""
    conn.request("GET", "/headers", headers={"Host": host, **(extra or {})})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body
    assert not response.will_close
    return {name.lower(): value for name, value in json.loads(body)["headers"]}


def test_a_compacted_plain_connection_serves_its_next_request_with_the_same_peer_facts(
        tmp_path: Path, origin_port: int, certs: Certs) -> None:
    proxy = start(tmp_path, origin_port, certs)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy, "l0"), timeout=10)
        first = headers_seen(conn, {"X-Forwarded-For": "198.51.100.66"})
        assert first["x-forwarded-for"] == "198.51.100.66, 127.0.0.1"
        until_gauges(proxy, (1, 1), "the idle connection compacted")
        second = headers_seen(conn, {"X-Forwarded-For": "198.51.100.66"})
        assert {k: v for k, v in second.items() if k != "x-request-id"} == {
            k: v for k, v in first.items() if k != "x-request-id"}
        # Idle again, it compacts again; the client closing it ends it.
        until_gauges(proxy, (1, 1), "the connection compacted a second time")
        conn.close()
        until_gauges(proxy, (0, 0), "the closed connection gone from both gauges")
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()


def test_a_compacted_tls_connection_keeps_its_client_certificate_lines(
        tmp_path: Path, origin_port: int, certs: Certs) -> None:
    proxy = start(tmp_path, origin_port, certs)
    try:
        port = port_of(proxy, "tls")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.sock = client_context(certs, "client.pem").wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="b.test")
        first = headers_seen(conn, host="b.test")
        assert first["x-ssl-subject"].startswith("CN=client1") and first["x-forwarded-proto"] == "https"
        until_gauges(proxy, (1, 1), "the idle TLS connection compacted")
        second = headers_seen(conn, host="b.test")
        for name in ("x-ssl-subject", "x-ssl-serial", "x-forwarded-proto", "x-forwarded-for"):
            assert second[name] == first[name], name
        conn.close()
        until_gauges(proxy, (0, 0), "the closed TLS connection gone")
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()


def test_a_compacted_proxy_protocol_connection_keeps_the_sent_client_address(
        tmp_path: Path, origin_port: int, certs: Certs) -> None:
    proxy = start(tmp_path, origin_port, certs)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy, "pp"), timeout=10)
        conn.connect()
        conn.sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 80\r\n")
        first = headers_seen(conn)
        assert first["x-forwarded-for"] == "203.0.113.7"
        until_gauges(proxy, (1, 1), "the idle PROXY-protocol connection compacted")
        second = headers_seen(conn)
        assert second["x-forwarded-for"] == "203.0.113.7"
        conn.close()
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()


def test_the_keepalive_timeout_closes_a_compacted_connection(
        tmp_path: Path, origin_port: int, certs: Certs) -> None:
    proxy = start(tmp_path, origin_port, certs, limits='keepalive_timeout = "2s"')
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy, "l0"), timeout=10)
        headers_seen(conn)
        until_gauges(proxy, (1, 1), "the idle connection compacted")
        conn.sock.settimeout(10)
        assert conn.sock.recv(1) == b"", "the proxy closes the connection at its keep-alive timeout"
        until_gauges(proxy, (0, 0), "the timed-out connection gone")
        conn.close()
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()


def test_a_graceful_stop_closes_compacted_connections_and_finishes_requests_in_flight(
        tmp_path: Path, origin_port: int, certs: Certs) -> None:
    proxy = start(tmp_path, origin_port, certs)
    try:
        idle = http.client.HTTPConnection("127.0.0.1", port_of(proxy, "l0"), timeout=10)
        headers_seen(idle)
        until_gauges(proxy, (1, 1), "the idle connection compacted")
        busy = socket.create_connection(("127.0.0.1", port_of(proxy, "l0")), timeout=10)
        busy.sendall(b"GET /delay/1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        until_gauges(proxy, (2, 1), "the slow request under way")
        proxy.send(signal.SIGTERM)  # graceful: drain, then exit
        idle.sock.settimeout(10)
        assert idle.sock.recv(1) == b"", "the drain closes the compacted idle connection"
        answer = b""
        while chunk := busy.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer, answer[:300]
        assert proxy.proc.wait(30) == 0
        busy.close()
        idle.close()
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()
