"""Upgrade tunnels (WebSockets) through rproxyd: a real `websockets` client and origin, plain and
TLS; refused and smuggling-shaped upgrades; half-close; limits; tunnels across HUP, USR2 and a
worker's SIGKILL. See docs/http.md, "Upgrade tunnels", and appliance/http/tunnel.py."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import ServerConnection, serve

from tests.support import (
    ScriptedBackend,
    free_port,
    raw_exchange,
    recv_until,
    running,
    status_codes,
    wait_for,
)
from tests.support.phases import phase_module
from tests.support.tls import Certs
from tests.support_proc import Rproxyd, config_text

pytestmark = pytest.mark.timeout(120)

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class WsOrigin:
    """A `websockets` echo server in a thread; "close:CODE" makes it close with CODE."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.close_codes: list[int | None] = []  # what each connection's client closed with
        self.server = serve(self._echo, "127.0.0.1", 0, ssl=ssl_context, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _echo(self, ws: ServerConnection) -> None:
        try:
            for message in ws:
                if isinstance(message, str) and message.startswith("close:"):
                    ws.close(int(message[6:]), "asked")
                    return
                ws.send(message)
        except ConnectionClosed:
            pass
        self.close_codes.append(ws.close_code)

    def stop(self) -> None:
        self.server.shutdown()


def _exercise(ws: ClientConnection, origin: WsOrigin) -> None:
    """Echo (text, binary), ping/pong, a 10 MB message, and close codes both ways."""
    ws.send("hello")
    assert ws.recv(timeout=10) == "hello"
    ws.send(b"\x00\x01binary")
    assert ws.recv(timeout=10) == b"\x00\x01binary"
    assert ws.ping(b"are you there").wait(10)
    big = os.urandom(10 * 1024 * 1024)
    ws.send(big)
    assert ws.recv(timeout=30) == big
    ws.close(4002, "client done")
    wait_for(lambda: 4002 in origin.close_codes, 10, "the origin to see close code 4002")


def _server_close(url: str, origin: WsOrigin, **options: object) -> None:
    with connect(url, max_size=None, **options) as ws:
        ws.send("close:4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


def test_websocket_echo_ping_big_message_and_close_codes(make_proxy):
    with running(origin := WsOrigin()):
        proxy = make_proxy(backends={"ws": [origin.address]})
        url = f"ws://127.0.0.1:{proxy.port}/ws"
        with connect(url, max_size=None) as ws:
            _exercise(ws, origin)
        _server_close(url, origin)
        # The proxy is still an HTTP proxy for the next client.
        assert status_codes(raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 2))[:1] == [426]


def test_wss_on_a_tls_listener_to_a_tls_backend(make_proxy, certs: Certs):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.path("b.test.pem"))
    with running(origin := WsOrigin(server_ctx)):
        proxy = make_proxy(
            backends={"ws": [origin.address]},
            backend_options=f'tls = true\ntls_ca = "{certs.path("ca.pem")}"\ntls_sni = "b.test"\n',
            extra=f'[listener.tls]\nenabled = true\ncertificate = "{certs.path("default.test.pem")}"\n')
        client_ctx = ssl.create_default_context(cafile=certs.path("ca.pem"))
        url = f"wss://default.test:{proxy.port}/ws"
        options = {"ssl": client_ctx, "sock": None}
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", proxy.port))
            options["sock"] = sock
            with connect(url, max_size=None, **options) as ws:
                _exercise(ws, origin)
            origin.close_codes.clear()
        options["sock"] = socket.create_connection(("127.0.0.1", proxy.port))
        _server_close(url, origin, **options)


Handler = Callable[[socket.socket, ScriptedBackend], None]


def _answer_upgrade_with(status_line: bytes, extra: bytes = b"") -> Handler:
    """A backend answering an upgrade request with `status_line`, and any other with 200 "plain"."""

    def handler(conn: socket.socket, backend: ScriptedBackend) -> None:
        while (head := backend.read_head(conn)) is not None:
            if b"upgrade: " in head.lower():
                conn.sendall(status_line + b"\r\n" + extra + b"Content-Length: 7\r\n\r\nrefused")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")

    return handler


def test_refused_upgrade_then_pipelined_request_is_parsed_as_http(make_proxy):
    # The backend answers 426: a normal response; the request pipelined behind the handshake
    # (sent in the same packet) must reach the backend as its own parsed request.
    with running(backend := ScriptedBackend(_answer_upgrade_with(b"HTTP/1.1 426 Upgrade Required"))):
        proxy = make_proxy(backends={"b": [backend.address]})
        pipelined = b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        # A header the client names in Connection is hop-by-hop on an upgrade request too (the
        # sanitization Envoy once skipped for upgrades).
        handshake = HANDSHAKE.replace(b"Connection: Upgrade", b"X-Hop: secret\r\nConnection: Upgrade, X-Hop")
        raw = raw_exchange(proxy.port, handshake + pipelined)
        assert status_codes(raw) == [426, 200], raw
        assert raw.endswith(b"plain")
        heads = [r.split(b"\r\n\r\n")[0] for r in backend.requests]
        assert len(heads) == 2 and heads[1].startswith(b"GET /next HTTP/1.1")
        assert b"\r\nUpgrade: websocket\r\nConnection: upgrade\r\n" in heads[0]
        assert b"x-hop" not in heads[0].lower()


def test_h2c_is_never_offered_and_a_101_nobody_asked_for_is_refused(make_proxy):
    seen: list[bytes] = []

    def handler(conn: socket.socket, backend: ScriptedBackend) -> None:
        while (head := backend.read_head(conn)) is not None:
            seen.append(head)
            # A backend that would speak h2c to anyone: it answers 101 whatever it was asked.
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")

    with running(backend := ScriptedBackend(handler)):
        proxy = make_proxy(backends={"b": [backend.address]}, backend_options="retries = 0\n")
        h2c = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
               b"Connection: Upgrade, HTTP2-Settings\r\n\r\n")
        raw = raw_exchange(proxy.port, h2c + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert status_codes(raw)[:1] == [502], raw  # the 101 is refused, never relayed
        assert b"101" not in raw.split(b"\r\n")[0]
        assert seen and b"upgrade" not in seen[0].lower() and b"http2-settings" not in seen[0].lower()


def test_101_to_a_protocol_not_offered_is_502(make_proxy):
    answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: something-else\r\nConnection: Upgrade\r\n\r\n"

    def handler(conn: socket.socket, backend: ScriptedBackend) -> None:
        if backend.read_head(conn) is not None:
            conn.sendall(answer + b"raw bytes of another protocol")

    with running(backend := ScriptedBackend(handler)):
        proxy = make_proxy(backends={"b": [backend.address]}, backend_options="retries = 0\n")
        raw = raw_exchange(proxy.port, HANDSHAKE)
        assert status_codes(raw) == [502] and b"raw bytes" not in raw


def _raw_tunnel_backend(conn: socket.socket, backend: ScriptedBackend) -> None:
    """101, then echo in upper case until the client's FIN, then "bye" and FIN."""
    if backend.read_head(conn) is None:
        return
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    while data := conn.recv(65536):
        conn.sendall(data.upper())
    conn.sendall(b"bye")
    conn.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("splice", ["64k", "0"], ids=["spliced", "copied"])
def test_half_close_passes_through_both_ways(make_proxy, splice: str):
    with running(backend := ScriptedBackend(_raw_tunnel_backend)):
        proxy = make_proxy(backends={"b": [backend.address]},
                           extra=f'[proxy]\nsplice_min_bytes = "{splice}"\n')
        with socket.create_connection(("127.0.0.1", proxy.port), 30) as sock:  # 6 MB echoed by a thread
            sock.sendall(HANDSHAKE + b"early bytes ")  # sent before the 101: held, then tunnelled
            # The 101 and the echo of the early bytes may come in one read.
            head, _, echoed = recv_until(sock, b"EARLY BYTES ", 30).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ") and b"\r\nUpgrade: websocket\r\n" in head
            assert echoed == b"EARLY BYTES "
            # Held until the 101: the backend read the head alone, the early bytes after its answer.
            assert backend.requests[0].endswith(b"\r\n\r\n")
            payload = os.urandom(3 * 1024 * 1024).hex().encode()
            threading.Thread(target=sock.sendall, args=(payload,), daemon=True).start()
            received = b""
            while len(received) < len(payload):
                received += sock.recv(1 << 20)
            assert received == payload.upper()
            sock.shutdown(socket.SHUT_WR)  # the backend sees our FIN, answers, then sends its own
            assert recv_until(sock, b"bye", 30) == b"bye"
            assert sock.recv(10) == b""


def test_idle_timeout_and_max_tunnels(make_proxy):
    with running(origin := WsOrigin()):
        proxy = make_proxy(backends={"ws": [origin.address]}, limits='tunnel_idle_timeout = "1s"\n',
                           vhosts='''
            [[vhost]]
            name = "default"
            hosts = ["*"]
            [[vhost.route]]
            backend = "ws"
            max_tunnels = 1
        ''')
        url = f"ws://127.0.0.1:{proxy.port}/ws"
        with connect(url) as ws:
            with pytest.raises(Exception, match="503"):
                connect(url, open_timeout=5)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)  # closed by the proxy after a second of silence
        with connect(url) as ws:  # the closed tunnel no longer counts
            ws.send("again")
            assert ws.recv(timeout=5) == "again"


# ------------------------------------------------------------------ signals


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[[str], tuple[Rproxyd, WsOrigin]]]:
    started: list[Rproxyd] = []
    origin = WsOrigin()

    def start(extra: str = "") -> tuple[Rproxyd, WsOrigin]:
        proxy = Rproxyd(tmp_path, config_text(origin.port, tmp_path / "run", extra, process="workers = 1"))
        started.append(proxy)
        return proxy, origin

    yield start
    for proxy in started:
        proxy.stop(signal.SIGQUIT)
    origin.stop()


def _url(proxy: Rproxyd) -> str:
    host, port = proxy.address
    return f"ws://{host}:{port}/ws"


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR2], ids=["hup", "usr2"])
def test_tunnels_survive_reload_and_upgrade_until_tunnel_drain_timeout(supervised, sig: int):
    proxy, _ = supervised('[proxy]\ntunnel_drain_timeout = "4s"\n')
    url = _url(proxy)
    with connect(url) as old:
        old.send("before")
        assert old.recv(timeout=5) == "before"
        proxy.send(sig)
        proxy.wait_running(generation=2)
        old.send("during")  # the draining worker still relays its tunnel
        assert old.recv(timeout=5) == "during"
        with connect(url) as new:  # new tunnels go to the new generation
            new.send("new")
            assert new.recv(timeout=5) == "new"
        with pytest.raises(ConnectionClosed):
            old.recv(timeout=15)  # closed at tunnel_drain_timeout, then the old worker exits
    wait_for(lambda: len(proxy.status()["workers"]) == 1, 15, "the old worker to exit")


def test_worker_sigkill_ends_its_tunnels_and_the_slot_serves_new_ones(supervised):
    proxy, _ = supervised()
    url = _url(proxy)
    with connect(url) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        (victim,) = proxy.current_workers()
        os.kill(victim["pid"], signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    wait_for(lambda: [w["pid"] for w in proxy.current_workers() if w["state"] == "accepting"]
             not in ([], [victim["pid"]]), 15, "a new worker in the slot")
    with connect(url) as ws:
        ws.send("y")
        assert ws.recv(timeout=5) == "y"


def test_stop_closes_tunnels_at_drain_timeout(supervised):
    proxy, _ = supervised('[proxy]\ndrain_timeout = "1s"\ntunnel_drain_timeout = "60s"\n')
    with connect(_url(proxy)) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        assert proxy.stop(signal.SIGTERM, timeout=15) == 0  # not held for tunnel_drain_timeout
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def test_metrics_and_one_access_log_record_per_tunnel(tmp_path: Path):
    from tests.test_observe import metric_sum, records, until_metrics

    origin = WsOrigin()
    proxy = Rproxyd(tmp_path, config_text(origin.port, tmp_path / "run", process="workers = 1", extra=f"""
[access_log]
enabled = true
file = "{tmp_path}/access.log"
flush_interval = "20ms"
fields = ["status", "bytes_in", "bytes_out", "duration"]

[admin]
enabled = true
bind = "127.0.0.1:0"
"""))
    try:
        with connect(_url(proxy), max_size=None) as ws:
            ws.send(os.urandom(100_000))  # random: permessage-deflate cannot shrink it
            assert len(ws.recv(timeout=5)) == 100_000
            until_metrics(proxy, lambda t: metric_sum(t, "rproxyd_tunnels_open") == 1, "one open tunnel")
            assert not (tmp_path / "access.log").exists() or not (tmp_path / "access.log").read_text()
        text = until_metrics(proxy, lambda t: metric_sum(t, "rproxyd_tunnels_closed_total") == 1, "the close")
        assert metric_sum(text, "rproxyd_tunnels_open") == 0
        # After the close frames, the server closes the TCP connection first (RFC 6455 7.1.1).
        assert metric_sum(text, "rproxyd_tunnels_closed_total", reason="backend_closed") == 1
        assert metric_sum(text, "rproxyd_tunnel_bytes_total", direction="client_to_backend") > 100_000
        assert metric_sum(text, "rproxyd_tunnel_bytes_total", direction="backend_to_client") > 100_000
        (record,) = records(tmp_path / "access.log", 1)
        assert record["status"] == 101, record
        assert record["bytes_in"] > 100_000 and record["bytes_out"] > 100_000 and record["duration"] > 0
    finally:
        proxy.stop(signal.SIGQUIT)
        origin.stop()


def test_the_phases_see_an_upgrade_request_like_any_other(make_proxy, tmp_path: Path):
    """request_filter may answer a handshake itself; upstream_peer chooses where its tunnel goes."""
    module = phase_module(tmp_path, """
        from appliance.phases import Phases, Response

        class Site(Phases):
            def request_filter(self, req, ctx):
                if req.path == "/ws/forbidden":
                    return Response(403, {"X-Saw-Upgrade": req.upgrade or "none"}, b"no\\n")

            def upstream_peer(self, req, ctx):
                return "live" if req.path == "/ws/elsewhere" else None
    """)
    with running(origin := WsOrigin()):
        # The route's own backend is down: only upstream_peer's choice reaches a server.
        proxy = make_proxy(backends={"down": [f"127.0.0.1:{free_port()}"], "live": [origin.address]},
                           routes=[("/", "down")], extra=f'[phases]\nmodule = "{module}"\n')
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{proxy.port}/ws/forbidden").close()
        assert refused.value.response.status_code == 403
        assert refused.value.response.headers["X-Saw-Upgrade"] == "websocket"
        with connect(f"ws://127.0.0.1:{proxy.port}/ws/elsewhere") as ws:
            ws.send("through the peer a phase chose")
            assert ws.recv(timeout=10) == "through the peer a phase chose"
