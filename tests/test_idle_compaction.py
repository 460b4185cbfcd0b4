"""Idle keep-alive connections compacted into IdleClients (appliance/http/idle.py, issue 15):
a connection idle past the compaction delay keeps what its next request needs (the peer
address and X-Forwarded-For, the TLS session's X-SSL-* lines, a PROXY header's client),
still times out, closes when the client closes it, is closed by a graceful drain, and is
counted in the metrics. A plain one also leaves uvloop: its socket waits in the worker's idle
epoll set, watched from /proc here, and goes back to uvloop when it becomes readable, with no
fd left behind however it ends. Real rproxyd, real demo origin, real clients (http.client)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.support import wait_for
from tests.support.tls import Certs, client_context
from tests.support_proc import Rproxyd, config_text
from tests.test_observe import admin, metric_sum

pytestmark = pytest.mark.timeout(90)


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


def server_end(proxy: Rproxyd, client: socket.socket) -> tuple[int, int] | None:
    """(worker pid, fd) of the proxy's end of `client`'s connection, found by its socket inode."""
    local, remote = client.getpeername()[1], client.getsockname()[1]
    with open("/proc/net/tcp") as table:
        inodes = [f"socket:[{fields[9]}]" for fields in map(str.split, table)
                  if fields[1].endswith(f":{local:04X}") and fields[2].endswith(f":{remote:04X}")]
    for worker in proxy.current_workers():
        for fd in os.listdir(f"/proc/{worker['pid']}/fd"):
            try:
                if os.readlink(f"/proc/{worker['pid']}/fd/{fd}") in inodes:
                    return worker["pid"], int(fd)
            except FileNotFoundError:
                continue
    return None


def epoll_sets(pid: int) -> dict[int, set[int]]:
    """The worker's epoll fds and the fds each watches (/proc/PID/fdinfo's tfd lines)."""
    sets = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventpoll]":
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    sets[int(fd)] = {int(line.split()[1]) for line in info if line.startswith("tfd:")}
        except FileNotFoundError:
            continue
    return sets


def detached(proxy: Rproxyd, client: socket.socket) -> bool:
    """Whether the proxy's end of `client` is out of uvloop: watched only by the worker's idle
    epoll set, which is itself one fd in the loop's (uvloop's) set."""
    end = server_end(proxy, client)
    if end is None:
        return False
    pid, fd = end
    sets = epoll_sets(pid)
    watching = [epfd for epfd, watched in sets.items() if fd in watched]
    return len(watching) == 1 and any(watching[0] in watched for watched in sets.values())


def until_detached(proxy: Rproxyd, client: socket.socket) -> None:
    wait_for(lambda: detached(proxy, client), 10, "the idle connection's socket detached from uvloop")


def open_fds(proxy: Rproxyd) -> int:
    return sum(len(os.listdir(f"/proc/{w['pid']}/fd")) for w in proxy.current_workers())


def until_fds(proxy: Rproxyd, baseline: int, what: str) -> None:
    wait_for(lambda: open_fds(proxy) == baseline, 10, what)


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
        until_detached(proxy, conn.sock)
        second = headers_seen(conn, {"X-Forwarded-For": "198.51.100.66"})
        assert {k: v for k, v in second.items() if k != "x-request-id"} == {
            k: v for k, v in first.items() if k != "x-request-id"}
        # Idle again, it compacts again; the client closing it ends it.
        until_gauges(proxy, (1, 1), "the connection compacted a second time")
        until_detached(proxy, conn.sock)
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
        assert server_end(proxy, conn.sock) is not None and not detached(proxy, conn.sock), \
            "a TLS connection keeps its transport (its session state is uvloop's SSLProtocol)"
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
        until_detached(proxy, conn.sock)
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
        baseline = open_fds(proxy)
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy, "l0"), timeout=10)
        headers_seen(conn)
        until_gauges(proxy, (1, 1), "the idle connection compacted")
        until_detached(proxy, conn.sock)
        conn.sock.settimeout(10)
        assert conn.sock.recv(1) == b"", "the proxy closes the connection at its keep-alive timeout"
        until_gauges(proxy, (0, 0), "the timed-out connection gone")
        until_fds(proxy, baseline, "the workers' fds back to what they were before the connection")
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
        until_detached(proxy, idle.sock)
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


def test_a_client_closing_a_detached_connection_leaves_no_fd_behind(
        tmp_path: Path, origin_port: int, certs: Certs) -> None:
    proxy = start(tmp_path, origin_port, certs)
    try:
        baseline = open_fds(proxy)
        for how in ("FIN", "reset"):
            conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy, "l0"), timeout=10)
            headers_seen(conn)
            until_detached(proxy, conn.sock)
            if how == "reset":  # SO_LINGER 0: close sends a reset
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            conn.close()
            until_gauges(proxy, (0, 0), f"the connection closed by the client ({how}) gone")
            until_fds(proxy, baseline, f"the workers' fds back to what they were ({how})")
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()


def numbered(reader: BinaryIO) -> str:
    """The next response's X-N request header, as the origin saw it (GET /headers). One reader
    for all the responses: pipelined ones may come in one segment."""
    assert reader.readline().startswith(b"HTTP/1.1 200 ")
    length = 0
    while (line := reader.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return {name.lower(): value for name, value in json.loads(reader.read(length))["headers"]}["x-n"]


def test_pipelined_requests_sent_to_a_detached_connection_are_all_answered(
        tmp_path: Path, origin_port: int, certs: Certs) -> None:
    """The bytes that wake a detached connection stay in the kernel until uvloop reads them:
    two pipelined requests in one write, then one split across writes, all answered in order."""
    proxy = start(tmp_path, origin_port, certs)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy, "l0"), timeout=10)
        headers_seen(conn)
        until_detached(proxy, conn.sock)
        sock = conn.sock
        reader = sock.makefile("rb")
        sock.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-N: 1\r\n\r\n"
                     b"GET /headers HTTP/1.1\r\nHost: x\r\nX-N: 2\r\n\r\n")
        assert [numbered(reader), numbered(reader)] == ["1", "2"]
        until_detached(proxy, sock)
        sock.sendall(b"GET /headers HTTP/1.1\r\nHo")
        sock.sendall(b"st: x\r\nX-N: 3\r\n\r\n")
        assert numbered(reader) == "3"
        reader.close()  # the socket closes with its last reference
        conn.close()
        until_gauges(proxy, (0, 0), "the connection gone")
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()
