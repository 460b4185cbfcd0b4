"""gRPC through rproxyd (issue 17, item 4): grpcio clients and a grpcio origin, h2 on both legs.

The four call types pass through with their metadata and trailers, from an h2c (prior
knowledge) or a TLS (ALPN h2) listener to a plaintext or TLS h2 backend; an origin's status and
message arrive intact; grpc-timeout bounds the upstream wait; errors rproxyd generates for a
gRPC request are trailers-only gRPC responses (UNAVAILABLE for a backend that is down,
UNIMPLEMENTED for a path no route takes), not text.

These need h2 from clients and to backends. On a ref whose configuration loader refuses the
h2 keys (listener `h2c`, backend `protocol`, "h2" in a TLS listener's `alpn`) the module is
skipped and says what was refused: the loader is what `rproxyd -t` runs, so the skip follows
what rproxyd itself accepts, and lifts by itself once h2 lands.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from appliance.config import loader
from tests.support import Proxy, ScriptedBackend, curl, free_port, wait_for
from tests.support.grpc_origin import FAIL_MESSAGE, METHODS, SERVICE, GrpcClient, GrpcOrigin
from tests.support.h2 import H2Client, StreamReply
from tests.support.phases import phase_module
from tests.support.tls import Certs

# The h2 keys these tests use, as rproxyd's configuration loader (what `rproxyd -t` runs) sees
# them: a refusal of any of them means this rproxyd does not speak h2. Other problems (the
# placeholder certificate) are not about h2 and do not count.
H2_PROBE = """
[[listener]]
name = "h2c"
bind = "127.0.0.1:1"
h2c = true

[[listener]]
name = "tls"
bind = "127.0.0.1:2"
[listener.tls]
enabled = true
certificate = "placeholder.pem"
alpn = ["h2", "http/1.1"]

[backend.grpc]
servers = ["127.0.0.1:3"]
protocol = "h2"

[[vhost]]
name = "default"
hosts = ["*"]
[[vhost.route]]
path = "/"
backend = "grpc"
"""


def _h2_refusals() -> list[str]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "h2.toml"
        path.write_text(H2_PROBE)
        try:
            loader.load(path)
        except loader.ConfigError as exc:
            return [problem.split(": ", 1)[-1] for problem in exc.problems
                    if re.search(r"\.(h2c|protocol|alpn): ", problem)]
    return []


REFUSALS = "; ".join(_h2_refusals())
pytestmark = pytest.mark.skipif(bool(REFUSALS), reason=f"rproxyd on this ref does not speak h2: {REFUSALS}")

LISTENERS = """
[[listener]]
name = "h2c"
bind = "127.0.0.1:{h2c_port}"
h2c = true

[[listener]]
name = "tls"
bind = "127.0.0.1:{tls_port}"
[listener.tls]
enabled = true
certificate = "{certificate}"
alpn = ["h2", "http/1.1"]
"""


@pytest.fixture(scope="module")
def origins(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GrpcOrigin]]:
    """A plaintext and a TLS grpcio origin (certificate for a.test)."""
    pem = Path(certs.path("a.test.pem"))
    events = tmp_path_factory.mktemp("grpc")
    started = {"plaintext": GrpcOrigin(free_port(), events / "plaintext.log"),
               "tls": GrpcOrigin(free_port(), events / "tls.log", pem, pem)}
    yield started
    for origin in started.values():
        origin.stop()


class GrpcProxy:
    """rproxyd with an h2c listener and a TLS listener offering h2, routing test.Echo to one h2 backend."""

    def __init__(self, make_proxy, certs: Certs, backend: str, backend_tls: bool = False,
                 extra: str = "") -> None:
        self.certs = certs
        self.h2c_port, self.tls_port = free_port(), free_port()
        options = 'protocol = "h2"\n'
        if backend_tls:
            options += f'tls = true\ntls_ca = "{certs.path("ca.pem")}"\ntls_sni = "a.test"\n'
        self.proxy: Proxy = make_proxy(
            backends={"grpc": [backend]}, routes=[(f"/{SERVICE}/", "grpc")],
            backend_options=options,
            extra=LISTENERS.format(h2c_port=self.h2c_port, tls_port=self.tls_port,
                                   certificate=certs.path("a.test.pem")) + extra)

    def client(self, tls: bool) -> GrpcClient:
        if tls:
            return GrpcClient(f"127.0.0.1:{self.tls_port}", self.certs.ca.cert_pem.bytes(), "a.test")
        return GrpcClient(f"127.0.0.1:{self.h2c_port}")


@pytest.mark.parametrize("origin_kind", ["plaintext", "tls"])
@pytest.mark.parametrize("client_tls", [False, True], ids=["h2c", "tls-alpn"])
def test_four_call_types_pass_through(make_proxy, certs, origins, client_tls, origin_kind):
    origin = origins[origin_kind]
    front = GrpcProxy(make_proxy, certs, origin.address, backend_tls=origin_kind == "tls")
    with front.client(client_tls) as client:
        answer, call = client.unary(b"hello", metadata=(("x-request", "r1"),))
        assert answer == b"hello"
        assert call.code() == grpc.StatusCode.OK
        assert ("x-origin", "grpc") in call.initial_metadata()
        assert ("x-trailer", "unary") in call.trailing_metadata()  # an origin's own trailer
        assert client.server_stream(50) == [str(i).encode() for i in range(50)]
        assert client.client_stream([b"a", b"b" * 100_000, b"c"]) == b"a|" + b"b" * 100_000 + b"|c"
        assert client.bidi([b"x", b"yz", b"w"]) == [b"X", b"YZ", b"W"]


@pytest.mark.parametrize("client_tls", [False, True], ids=["h2c", "tls-alpn"])
def test_origin_status_and_message_pass_through(make_proxy, certs, origins, client_tls):
    front = GrpcProxy(make_proxy, certs, origins["plaintext"].address)
    with front.client(client_tls) as client, pytest.raises(grpc.RpcError) as failed:
        client.unary(b"", method="Fail")
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details() == FAIL_MESSAGE


def test_cancel_reaches_the_origin(make_proxy, certs, origins):
    """A client's RST_STREAM (CANCEL) on a call without a deadline is passed on: the origin's call
    is cancelled, not left running."""
    origin = origins["plaintext"]
    front = GrpcProxy(make_proxy, certs, origin.address)
    started, cancelled = origin.count("started Sleep"), origin.count("cancelled Sleep")
    with front.client(False) as client:
        call = client.channel.unary_unary(METHODS["Sleep"]).future(b"30")  # no deadline, no grpc-timeout
        wait_for(lambda: origin.count("started Sleep") > started, 10, "the origin to start the call")
        call.cancel()
        wait_for(lambda: origin.count("cancelled Sleep") > cancelled, 10, "the origin to see the cancel")


def _never_answer(conn, backend) -> None:
    """An h2 backend that accepts, reads everything and never writes a byte (not even SETTINGS)."""
    while conn.recv(65536):
        pass


def test_grpc_timeout_bounds_the_upstream_wait(make_proxy, certs, tmp_path):
    """A backend that never answers, a read_timeout of 60 s, and a client (curl) that sends
    grpc-timeout: 300m but enforces no deadline itself: only rproxyd's bound can end the call,
    which it answers DEADLINE_EXCEEDED, trailers-only (within curl's 20 s, or curl fails)."""
    silent = ScriptedBackend(_never_answer)
    try:
        front = GrpcProxy(make_proxy, certs, silent.address)
        body = tmp_path / "call.bin"
        body.write_bytes(b"\0" + (5).to_bytes(4, "big") + b"hello")
        heads = tmp_path / "heads.txt"
        done = curl("--http2-prior-knowledge", "-m", "20", "-D", str(heads), "-o", str(tmp_path / "out"),
                    "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", "grpc-timeout: 300m",
                    "--data-binary", f"@{body}", f"http://127.0.0.1:{front.h2c_port}{METHODS['Unary']}",
                    timeout=30)
        assert done.returncode == 0, done.stderr
        lines = heads.read_text().lower().splitlines()
        assert lines[0].startswith("http/2 200")
        assert "content-type: application/grpc" in lines
        assert "grpc-status: 4" in lines  # DEADLINE_EXCEEDED
        assert silent.connections >= 1  # the wait was for the backend, not for a connection
    finally:
        silent.stop()


@pytest.mark.parametrize("client_tls", [False, True], ids=["h2c", "tls-alpn"])
def test_backend_down_is_unavailable(make_proxy, certs, client_tls):
    front = GrpcProxy(make_proxy, certs, f"127.0.0.1:{free_port()}")  # nothing listens there
    with front.client(client_tls) as client, pytest.raises(grpc.RpcError) as failed:
        client.unary(b"hello")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    # rproxyd's trailers-only answer, not the client's own connect failure (the client reached rproxyd).
    assert failed.value.details() in ("Bad Gateway", "Service Unavailable")


def test_no_route_is_unimplemented(make_proxy, certs, origins):
    front = GrpcProxy(make_proxy, certs, origins["plaintext"].address)
    with front.client(False) as client, pytest.raises(grpc.RpcError) as failed:
        client.unary(b"hello", method="/other.Service/Call")
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert failed.value.details() == "Not Found"


# One gRPC message (uncompressed, 5-byte prefix) carrying b"hello".
HELLO = b"\0" + (5).to_bytes(4, "big") + b"hello"


GRPC_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]


class StallingOrigin:
    """An h2 backend (the pure `h2` package) that takes every request and never finishes one:
    with `send_head` it sends the response head (200, application/grpc) first. It records the
    requests it got and the RST_STREAM codes it received, so a test sees the proxy cancel."""

    def __init__(self, send_head: bool) -> None:
        self.send_head = send_head
        self.resets: list[int] = []
        self.requests = 0
        self.backend = ScriptedBackend(self._serve)

    def __enter__(self) -> StallingOrigin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.backend.stop()

    def _serve(self, conn, backend) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        session = h2.connection.H2Connection(config)
        session.initiate_connection()
        conn.sendall(session.data_to_send())
        while data := conn.recv(65536):
            for event in session.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.requests += 1
                    if self.send_head:
                        session.send_headers(event.stream_id, GRPC_HEAD)
                elif isinstance(event, h2.events.DataReceived):
                    session.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    self.resets.append(event.error_code)
            conn.sendall(session.data_to_send())


def _grpc_call(port: int, timeout: str | None) -> StreamReply:
    """A unary call by a raw h2 client that enforces no deadline itself; what came back."""
    client = H2Client(port)
    headers = [("content-type", "application/grpc"), ("te", "trailers")]
    if timeout is not None:
        headers.append(("grpc-timeout", timeout))
    try:
        stream_id = client.request(METHODS["Unary"], "POST", headers=headers, body=HELLO)
        reply = client.wait(stream_id)
    finally:
        client.close()
    assert reply.reset is None and reply.ended
    return reply


@pytest.mark.parametrize("send_head", [False, True], ids=["before-head", "after-head"])
def test_grpc_timeout_cancels_the_backend_stream(make_proxy, certs, send_head):
    """On grpc-timeout rproxyd resets the backend's stream (CANCEL: the origin stops working on a
    call nobody waits for) and answers DEADLINE_EXCEEDED: trailers-only before a response head,
    else as the trailers of the response that started."""
    with StallingOrigin(send_head) as origin:
        front = GrpcProxy(make_proxy, certs, origin.backend.address)
        reply = _grpc_call(front.h2c_port, "200m")
        assert reply.status == 200
        assert reply.header(b"content-type") == b"application/grpc"
        ending = dict(reply.trailers if send_head else reply.headers)
        assert ending[b"grpc-status"] == b"4"  # DEADLINE_EXCEEDED
        assert not reply.body
        wait_for(lambda: 8 in origin.resets, 10, "the backend's stream reset with CANCEL")


@pytest.mark.parametrize("send_head", [False, True], ids=["before-head", "after-head"])
def test_backend_read_timeout_is_deadline_exceeded(make_proxy, certs, send_head):
    """No grpc-timeout, an h2 backend silent past read_timeout: a timeout (504), which gRPC
    clients see as DEADLINE_EXCEEDED, not as a connection lost (UNAVAILABLE, retried); after the
    response head, as its trailers (not a reset, which a client can only call CANCELLED)."""
    with StallingOrigin(send_head) as origin:
        port = free_port()
        front = make_proxy(backends={"grpc": [origin.backend.address]}, routes=[(f"/{SERVICE}/", "grpc")],
                           backend_options='protocol = "h2"\nread_timeout = "300ms"\n',
                           extra=f'[[listener]]\nname = "h2c"\nbind = "127.0.0.1:{port}"\nh2c = true\n')
        reply = _grpc_call(port, None)
        assert dict(reply.trailers if send_head else reply.headers)[b"grpc-status"] == b"4"
        assert "no response data for 0.3s" in front.log()


def test_malformed_grpc_timeout_is_internal(make_proxy, certs):
    """A grpc-timeout outside the grammar is the client's error (400), INTERNAL by gRPC's HTTP
    mapping; the backend is not asked."""
    with StallingOrigin(False) as origin:
        front = GrpcProxy(make_proxy, certs, origin.backend.address)
        reply = _grpc_call(front.h2c_port, "1.5S")
        assert reply.status == 200
        assert reply.header(b"grpc-status") == b"13"
        assert reply.header(b"grpc-message") == b"Bad Request"
        assert origin.requests == 0


DENY = """
    from appliance.phases import Phases, Response

    # Reads a gRPC call's head like any request's: one method is refused, and a metadata
    # entry picks a refusal.
    class Site(Phases):

        def new_ctx(self):
            return None

        def request_filter(self, req, ctx):
            if not req.headers.get("content-type", "").startswith("application/grpc"):
                return None
            if req.path == "/test.Echo/ServerStream":
                return Response(403, {"content-type": "text/plain"}, "streams are not for you")
            role = req.headers.get("x-role")
            if role == "anonymous":
                return Response(401, {}, "")
            if role == "greedy":
                return Response(429, {}, "")
            return None
"""


def test_phases_see_grpc_calls_and_their_refusals_map(make_proxy, certs, origins, tmp_path):
    module = phase_module(tmp_path, DENY)
    front = GrpcProxy(make_proxy, certs, origins["plaintext"].address,
                      extra=f'[phases]\nmodule = "{module}"\n')
    with front.client(False) as client:
        assert client.unary(b"hi")[0] == b"hi"  # the phase lets the rest through
        for role, code in (("anonymous", grpc.StatusCode.UNAUTHENTICATED),
                           ("greedy", grpc.StatusCode.UNAVAILABLE)):  # 429: gRPC's HTTP mapping
            with pytest.raises(grpc.RpcError) as failed:
                client.unary(b"hi", metadata=(("x-role", role),))
            assert failed.value.code() == code
        with pytest.raises(grpc.RpcError) as failed:
            client.server_stream(3)
        assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert failed.value.details() == "Forbidden"
