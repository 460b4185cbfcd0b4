"""The PROXY protocol end to end: from a balancer (listener proxy_protocol) and to backends.

One rproxyd serves three listeners: `pp` (plain, proxy_protocol), `pptls` (TLS behind the
header) and `plain` (no proxy_protocol), with trusted_proxies = 127.0.0.1 only. Clients
connect from 127.0.0.1, or from 127.0.0.2 to play an untrusted sender. HAProxy plays a real
balancer in front (send-proxy-v2 with TLVs) and a real backend behind (accept-proxy).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import socket
import struct
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.http.proxy_protocol import V2_SIGNATURE
from tests.support import free_port, read_all, wait_for, wait_port
from tests.support.phases import phase_module
from tests.support.tls import Certs, client_context
from tests.support_proc import Rproxyd, accepted_when_draining, config_text
from tests.test_observe import admin, metric_sum, records, until_metrics

pytestmark = pytest.mark.timeout(90)

HEADER_TIMEOUT = 1.0


def v2_inet(src: str, sport: int, tlvs: bytes = b"", command: int = 0x21) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton("192.0.2.1") + struct.pack("!HH", sport, 443) + tlvs
    return V2_SIGNATURE + bytes((command, 0x11)) + struct.pack("!H", len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + struct.pack("!H", len(value)) + value


def proxy_protocol_config(origin_port: int, run_dir: Path, certs: Certs, access_log: Path,
                          backend: str = "") -> str:
    text = config_text(origin_port, run_dir, extra=f"""
[[listener]]
name = "pptls"
bind = "127.0.0.1:0"
proxy_protocol = true
[listener.tls]
enabled = true
certificate = "{certs.path('a.test.pem')}"

[[listener]]
name = "plain"
bind = "127.0.0.1:0"

[proxy]
trusted_proxies = ["127.0.0.1/32"]

[limits]
header_timeout = "{HEADER_TIMEOUT}s"

[access_log]
enabled = true
file = "{access_log}"
flush_interval = "20ms"

[admin]
enabled = true
bind = "127.0.0.1:0"
{backend}
""")
    return text.replace('name = "l0"\n', 'name = "l0"\nproxy_protocol = true\n', 1)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, origin_port: int, certs: Certs) -> Iterator[Rproxyd]:
    directory = tmp_path_factory.mktemp("pp")
    (directory / "run").mkdir()
    proc = Rproxyd(directory, proxy_protocol_config(origin_port, directory / "run", certs,
                                                    directory / "access.log"))
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()


def port_of(proxy: Rproxyd, listener: str) -> int:
    return int(proxy.status()["listeners"][listener].rsplit(":", 1)[1])


def exchange(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Send `data` on a fresh connection from `source`; everything received until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(data)
        return read_all(sock, 10)


def forwarded(response: bytes) -> dict[str, str]:
    """The headers the demo origin's /headers saw, lower-cased."""
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    body = response.partition(b"\r\n\r\n")[2]
    return {name.lower(): value for name, value in json.loads(body)["headers"]}


GET_HEADERS = (b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.66\r\n"
               b"Connection: close\r\n\r\n")


def refused(proxy: Rproxyd, reason: str) -> float:
    return metric_sum(admin(proxy, "/metrics").text, "rproxyd_proxy_headers_refused_total", reason=reason)


def test_the_sent_address_is_the_client_address_everywhere(proxy: Rproxyd) -> None:
    port = port_of(proxy, "l0")
    big_tlvs = tlv(0x02, b"shop.example") + tlv(0x05, b"u" * 100) + tlv(0x01, b"http/1.1")
    cases = [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 80\r\n", "203.0.113.7", 4242),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 4243 80\r\n", "2001:db8::7", 4243),
        # Over 108 bytes, TLVs, and the request in the same segment as the header.
        (v2_inet("203.0.113.8", 4244, big_tlvs), "203.0.113.8", 4244),
    ]
    for header, ip, _ in cases:
        seen = forwarded(exchange(port, header + GET_HEADERS))
        # The client's own X-Forwarded-For is not kept: the sent address is no trusted proxy.
        assert (seen["x-forwarded-for"], seen["x-real-ip"]) == (ip, ip)
    # Each worker writes its own batches: the records may come in any order.
    expected = {"203.0.113.7:4242", "[2001:db8::7]:4243", "203.0.113.8:4244"}
    wait_for(lambda: expected <= {r["client"] for r in records(proxy.dir / "access.log", 1)}, 10,
             "the three clients in the access log")


def test_local_and_unknown_keep_the_real_peer(proxy: Rproxyd) -> None:
    port = port_of(proxy, "l0")
    # sozu PR 1334: LOCAL with INET addresses must not set the client address.
    for header in (v2_inet("203.0.113.9", 1, command=0x20), b"PROXY UNKNOWN 203.0.113.9 192.0.2.1 1 2\r\n"):
        seen = forwarded(exchange(port, header + GET_HEADERS))
        # The real peer, 127.0.0.1, is a trusted proxy: its client's X-Forwarded-For is kept.
        assert seen["x-forwarded-for"] == "198.51.100.66, 127.0.0.1"


def test_untrusted_sender_is_closed_and_logged(proxy: Rproxyd) -> None:
    before = refused(proxy, "untrusted")
    answer = exchange(port_of(proxy, "l0"), b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\n" + GET_HEADERS,
                      source="127.0.0.2")
    assert answer == b""
    until_metrics(proxy, lambda t: metric_sum(t, "rproxyd_proxy_headers_refused_total", reason="untrusted")
                  == before + 1, "one untrusted sender counted")
    wait_for(lambda: "connection from 127.0.0.2 closed: not in trusted_proxies" in proxy.log(), 10,
             "the refusal logged")


def test_garbage_truncated_and_stalled_headers_are_closed(proxy: Rproxyd) -> None:
    port = port_of(proxy, "l0")
    before = {reason: refused(proxy, reason) for reason in ("invalid", "truncated", "timeout")}
    # Garbage: an HTTP request where the header belongs, and a v1 line without CRLF (squid PR 342).
    assert exchange(port, GET_HEADERS) == b""
    assert exchange(port, b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2" + b" " * 100) == b""
    # Truncated: the peer closes inside the header.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(v2_inet("203.0.113.7", 1)[:20])
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock, 10) == b""
    # Stalled: half a header, then nothing; closed after header_timeout.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 203.0.1")
        assert read_all(sock, 10 * HEADER_TIMEOUT) == b""
    until_metrics(proxy, lambda t: all(
        metric_sum(t, "rproxyd_proxy_headers_refused_total", reason=reason) == before[reason] + count
        for reason, count in (("invalid", 2), ("truncated", 1), ("timeout", 1))), "each refusal counted")


def test_a_header_sent_slowly_in_pieces_is_read_whole(proxy: Rproxyd) -> None:
    header = v2_inet("203.0.113.10", 4245, tlv(0x05, b"id-1"))
    with socket.create_connection(("127.0.0.1", port_of(proxy, "l0")), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (header[:5], header[5:15], header[15:17], header[17:]):
            sock.sendall(piece)
            # Each piece has reached the proxy's socket (nothing left in our send queue).
            wait_for(lambda: _unsent(sock) == 0, 5, "the piece sent")
        sock.sendall(GET_HEADERS)
        assert forwarded(read_all(sock, 10))["x-real-ip"] == "203.0.113.10"


def _unsent(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def test_a_header_on_a_listener_without_proxy_protocol_is_never_parsed(proxy: Rproxyd) -> None:
    # CVE-2024-35175 (sshpiper): the header accepted where it was not configured.
    port = port_of(proxy, "plain")
    for header in (b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\n", v2_inet("203.0.113.7", 1)):
        answer = exchange(port, header + GET_HEADERS)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]


def test_tls_listener_reads_the_header_before_the_handshake(proxy: Rproxyd, certs: Certs) -> None:
    port = port_of(proxy, "pptls")
    ctx = client_context(certs)
    session = None
    for ip, sport in (("203.0.113.11", 5000), ("203.0.113.12", 5001)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(f"PROXY TCP4 {ip} 192.0.2.1 {sport} 443\r\n".encode())
            with ctx.wrap_socket(raw, server_hostname="a.test", session=session) as sock:
                reused = sock.session_reused
                sock.sendall(GET_HEADERS.replace(b"Host: x", b"Host: a.test"))
                seen = forwarded(read_all(sock, 10))
                session = sock.session
        assert (seen["x-forwarded-for"], seen["x-forwarded-proto"]) == (ip, "https")
    assert reused  # the second connection resumed the first one's session


@pytest.mark.parametrize("listener", ["l0", "pptls"])
def test_a_connection_inside_its_header_when_its_worker_drains_is_served(
        tmp_path: Path, origin_port: int, certs: Certs, listener: str) -> None:
    # The header (and on pptls the TLS handshake after it) comes after the reload: the old
    # worker used to drop connections still inside their header when it stopped accepting.
    (tmp_path / "run").mkdir()
    config = proxy_protocol_config(origin_port, tmp_path / "run", certs, tmp_path / "access.log")
    proxy = Rproxyd(tmp_path, config)
    try:
        sock = accepted_when_draining(proxy, port_of(proxy, listener))
        sock.sendall(b"PROXY TCP4 203.0.113.21 192.0.2.1 5000 443\r\n")
        if listener == "pptls":
            sock = client_context(certs).wrap_socket(sock, server_hostname="a.test")
        with sock:
            sock.sendall(GET_HEADERS.replace(b"Host: x", b"Host: a.test"))
            assert forwarded(read_all(sock, 10))["x-forwarded-for"] == "203.0.113.21"
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()


def test_haproxy_in_front_sends_v2_with_tlvs(proxy: Rproxyd, tmp_path: Path) -> None:
    front = free_haproxy(tmp_path, f"""
frontend f
    bind 127.0.0.1:{{port}}
    mode tcp
    default_backend b
backend b
    mode tcp
    server rproxyd 127.0.0.1:{port_of(proxy, 'l0')} send-proxy-v2 proxy-v2-options authority,unique-id,crc32c
""")
    try:
        # HAProxy sends the address it accepted the client from: 127.0.0.3, not itself.
        seen = forwarded(exchange(front.port, GET_HEADERS, source="127.0.0.3"))
        assert seen["x-forwarded-for"] == "127.0.0.3"
    finally:
        front.stop()


def test_phases_and_the_client_ip_hash_see_the_sent_address(tmp_path: Path, origins: dict,
                                                            certs: Certs) -> None:
    module = phase_module(tmp_path, """
        from appliance.phases import Phases, Response

        class Site(Phases):
            def request_filter(self, req, ctx):
                if req.path == "/whoami":
                    return Response(200, body=req.client_ip)
    """)
    (tmp_path / "run").mkdir()
    a, b = origins["a"].port, origins["b"].port
    text = proxy_protocol_config(a, tmp_path / "run", certs, tmp_path / "access.log",
                                 f'[phases]\nmodule = "{module}"\n')
    proxy = Rproxyd(tmp_path, text.replace(f'servers = ["127.0.0.1:{a}"]',
                                           f'servers = ["127.0.0.1:{a}", "127.0.0.1:{b}"]\nbalance = "hash"'))
    try:
        port = port_of(proxy, "l0")

        def ask(ip: str, path: str) -> bytes:
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            return exchange(port, f"PROXY TCP4 {ip} 192.0.2.1 1000 80\r\n".encode() + request)

        assert ask("203.0.113.50", "/whoami").endswith(b"\r\n\r\n203.0.113.50")
        # The hash on client-ip spreads the sent addresses over both servers (the balancer's
        # own address would send them all to one), the same address always to the same one.
        def origin_of(ip: str) -> str:
            head = ask(ip, "/").partition(b"\r\n\r\n")[0].decode()
            return next(line[len("X-Origin: "):] for line in head.split("\r\n")
                        if line.startswith("X-Origin: "))

        chosen = {ip: origin_of(ip) for ip in (f"203.0.113.{i}" for i in range(1, 17))}
        assert set(chosen.values()) == {"a", "b"}
        assert all(origin_of(ip) == name for ip, name in list(chosen.items())[:4])
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()


# -- to backends


class Haproxy:
    """haproxy -db with `body` after a defaults section ({port}: the port it was given)."""

    def __init__(self, directory: Path, body: str) -> None:
        self.port = free_port()
        conf = directory / f"haproxy-{self.port}.cfg"
        conf.write_text("""
global
    log stdout format raw local0
defaults
    log global
    option httplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
""" + body.replace("{port}", str(self.port)))
        self.log_path = directory / f"haproxy-{self.port}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(["haproxy", "-f", str(conf), "-db"], stdout=out, stderr=out)
        wait_port(self.port, proc=self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def free_haproxy(directory: Path, body: str) -> Haproxy:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    return Haproxy(directory, body)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_to_a_backend(tmp_path: Path, origin_port: int, certs: Certs, version: str) -> None:
    # HAProxy with accept-proxy in front of the demo origin: it tells the origin whom the
    # header named, and refuses a connection without one (or a second one on a reused one).
    back = free_haproxy(tmp_path, f"""
frontend f
    mode http
    bind 127.0.0.1:{{port}} accept-proxy
    http-request set-header X-Proxy-Src %[src]:%[src_port]
    http-request set-header X-Proxy-Dst %[dst]:%[dst_port]
    default_backend b
backend b
    mode http
    server origin 127.0.0.1:{origin_port}
""")
    (tmp_path / "run").mkdir()
    backend = f"""
[backend.pp]
servers = ["127.0.0.1:{back.port}"]
proxy_protocol = "{version}"
[backend.pp.health]
path = "/"
interval = "100ms"
"""
    text = proxy_protocol_config(origin_port, tmp_path / "run", certs, tmp_path / "access.log", backend)
    proxy = Rproxyd(tmp_path, text.replace('backend = "demo"', 'backend = "pp"'))
    try:
        plain = port_of(proxy, "plain")
        with socket.create_connection(("127.0.0.1", plain), timeout=10) as sock:
            client_port = sock.getsockname()[1]
            keep = GET_HEADERS.replace(b"Connection: close\r\n", b"")
            sock.sendall(keep + keep + GET_HEADERS)  # three requests on one client connection
            answers = read_all(sock, 10).split(b"HTTP/1.1 ")[1:]
        assert len(answers) == 3
        for answer in answers:
            seen = forwarded(b"HTTP/1.1 " + answer)
            assert seen["x-proxy-src"] == f"127.0.0.1:{client_port}"
            assert seen["x-proxy-dst"] == f"127.0.0.1:{plain}"
        # Behind a PROXY listener, the address that header sent goes on to the backend.
        seen = forwarded(exchange(port_of(proxy, "l0"), b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 80\r\n"
                                  + GET_HEADERS))
        assert seen["x-proxy-src"] == "203.0.113.7:4242"
        # The health probes (LOCAL / UNKNOWN headers) pass: the server was never taken out.
        # HAProxy logged several of them as answered, and rproxyd never marked the server DOWN.
        wait_for(lambda: back.log().count('"GET / HTTP/1.1"') >= 3, 10, "three health probes answered")
        assert "DOWN" not in proxy.log()
        until_metrics(proxy, lambda t: metric_sum(t, "rproxyd_backend_server_up", backend="pp")
                      == metric_sum(t, "rproxyd_backend_server_up", backend="demo") > 0, "the server up")
    finally:
        proxy.stop()
        back.stop()
    assert "Traceback" not in proxy.log(), proxy.log()
