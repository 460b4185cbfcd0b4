"""One request/response pair crossing the proxy: its record, its state table, and the seam.

The exchange is what the two sides share. The client side (appliance/http/downstream.py)
and the backend side (appliance/upstream/) act on each other only through the two
interfaces here, each typed against the other side's interface and never its class:

- `Downstream`: what the backend side may call on whatever sent the request: the HTTP/1
  client connection, or one HTTP/2 stream (appliance/http/h2_downstream.py); both extend
  DownstreamBase (appliance/http/downstream_base.py). The backend side hands over parsed
  facts (status, reason, the header list, the backend's version and Via, how the body is
  delimited) and body bytes; the downstream frames them for its own peer (status line, Via,
  chunked or not, Connection, keep-alive) and flow-controls its side. Nothing on the
  backend side touches a downstream's fields or transport.
- `Upstream`: what the client side may call on the backend connection an exchange is
  attached to (request bytes, flow control, the request-body splice, abandoning it).

Every call takes effect at once, from inside a Protocol callback: no coroutine, no
per-call allocation beyond the bytes written. This module imports neither side, so both
(and the observers, appliance/observe/) can import it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from appliance.phases.dispatch import NO_PHASES
from appliance.statemachine import Transitions

if TYPE_CHECKING:
    from appliance.http.errors import ProxyFailure
    from appliance.upstream.splice import PipePool

# How the backend delimits a response body (the downstream picks its own framing from it).
BODY_NONE = 0  # no body: HEAD, 204, 304
BODY_LENGTH = 1  # Content-Length (the header is in the list)
BODY_CHUNKED = 2  # chunked from the backend: length unknown, ends with finish()
BODY_UNTIL_CLOSE = 3  # ends when the backend closes, then finish()

# Why the backend side asks a downstream to stop reading from its peer.
PAUSE_UPSTREAM_FULL = 1  # the backend is not keeping up with the request body
PAUSE_BUFFER_FULL = 4  # body buffered while waiting for a backend connection (resumed once sent)

Fields = list[tuple[bytes, bytes]]


class RequestIds(Protocol):
    """The part of a downstream's worker context read through an exchange."""

    # Makes an X-Request-Id value, or returns None when [proxy] request_id is off.
    new_request_id: Callable[[], bytes | None]


class Downstream(Protocol):
    """What the backend side may call on the side that sent the request."""

    # Who sent the request, read by the request head (appliance/http/request_head.py)
    # and the balancer's client-address hash.
    peer_ip: bytes
    peer_port: int  # 0: unknown
    trusted: bool  # a trusted proxy: its X-Forwarded-For and X-Real-IP are kept
    forwarded_tail: bytes  # "<peer>\r\nX-Forwarded-Proto: <proto>\r\n" and any X-SSL-* lines
    write_paused: bool  # the peer is not reading: a new backend read starts paused

    @property
    def ctx(self) -> RequestIds:
        """The downstream's worker context (a WorkerContext, appliance/context.py)."""

    def local_address(self) -> tuple[str, int] | None:
        """The address the client connected to (a backend's PROXY header names it), if known."""

    def send_continue(self, exchange: Exchange) -> None:
        """The backend is ready for the request body: let a client waiting on Expect send it."""

    def informational(self, exchange: Exchange, status: int, reason: bytes, headers: Fields) -> None:
        """A 1xx response (never 101) arrived before the final one."""

    def start_response(self, exchange: Exchange, status: int, reason: bytes, headers: Fields,
                       version: str, via: bytes | None, body: int) -> None:
        """The final response head: `version` and `via` as the backend sent them, `body` a BODY_* mode."""

    def send_body(self, data: bytes) -> None:
        """Response body bytes, as the backend sent them (unchunked)."""

    def flush(self) -> None:
        """The end of one backend read: send anything held back to join the next bytes."""

    def finish(self, exchange: Exchange, trailers: Fields | None) -> None:
        """The response is complete (with the chunked body's trailers, if any)."""

    def fail(self, exchange: Exchange, failure: ProxyFailure) -> None:
        """Answer with an error response, or cut the response if it has started."""

    def redirect(self, exchange: Exchange, target: bytes) -> None:
        """The backend asked for an internal redirect: route the request again to `target`."""

    def choose_peer(self, exchange: Exchange, retry: bool = False) -> None:
        """Ask the upstream_peer phase where the request goes (again, before a retry) and send it there."""

    def pause_reading(self, reason: int) -> None:
        """Stop reading from the peer for `reason` (a PAUSE_* flag) until resume_reading(reason)."""

    def resume_reading(self, reason: int) -> None: ...

    def response_splice_target(self) -> asyncio.Transport | None:
        """The raw transport a response body may be spliced to now, or None (TLS, framing, queued bytes)."""

    def response_spliced(self, size: int) -> None:
        """A splice gave `size` body bytes to the peer."""

    def response_splice_blocked(self, blocked: bool) -> None:
        """A splice waits for the peer to take bytes (the send timeout runs), or no longer does."""

    def switch_protocols(self, exchange: Exchange, reason: bytes, headers: Fields, via: bytes | None,
                         protocol: bytes, backend: asyncio.Transport, rest: bytes,
                         pipes: PipePool | None) -> None:
        """The backend answered 101 switching to `protocol`, which the request offered: send the
        101 on and relay both ways from now (appliance/http/tunnel.py). `backend` is the backend
        connection's transport, handed over (it never returns to its pool), `rest` what it sent
        after the 101, `pipes` the pool's pipes when the backend side is plaintext (else None)."""

    def close(self, force: bool = False) -> None:
        """End this downstream (force: at once, dropping what is queued for the peer)."""


class Upstream(Protocol):
    """What the client side may call on the backend connection its exchange is attached to."""

    def send_request_bytes(self, data: bytes) -> None:
        """Request bytes, as they go to the backend (head, or body already framed)."""

    def send_request_chunk(self, data: bytes) -> None:
        """Request body bytes to send in one chunk of a chunked body."""

    def pause_reading(self) -> None:
        """The downstream's peer is not keeping up: stop reading the response."""

    def resume_reading(self) -> None: ...

    def request_splice_target(self, remaining: int) -> tuple[PipePool, asyncio.Transport] | None:
        """Pipes and transport for splicing `remaining` request-body bytes; None: copy them."""

    def request_splice_waiting(self, waiting: bool) -> None:
        """A request-body splice waits for the backend to take bytes, or no longer does."""

    def abandon(self) -> None:
        """The exchange ended on the client side mid-flight: the connection can't be reused."""

    def close(self) -> None: ...


class ExchangeState(IntEnum):  # IntEnum: hashed in C, for the transition checks
    HEAD = 1  # request head being parsed
    WAITING_TURN = 2  # head parsed; started after the read that parsed it, and after earlier requests
    PENDING = 3  # in a backend's pending queue, waiting for a connection
    PROXYING = 4  # attached to a backend connection
    FINISHED = 5  # response complete, failed, or abandoned
    AWAITING_PHASE = 6  # an async request_filter or upstream_peer suspended; goes on once it completes


# The states as module constants: a module global is one cached lookup, while every
# `ExchangeState.X` goes through EnumType's __getattr__ hook (interpreted or compiled).
HEAD, WAITING_TURN, PENDING, PROXYING, FINISHED, AWAITING_PHASE = ExchangeState
_MOVES = Transitions("exchange", {
    HEAD: (WAITING_TURN, FINISHED),
    WAITING_TURN: (AWAITING_PHASE, PENDING, PROXYING, FINISHED),
    AWAITING_PHASE: (PENDING, PROXYING, FINISHED),
    # AWAITING_PHASE: an async upstream_peer asked again before a retry.
    PENDING: (AWAITING_PHASE, PROXYING, FINISHED),
    # PENDING: retried after a reused connection died unanswered.
    PROXYING: (PENDING, FINISHED),
})

IDEMPOTENT_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
# Headers by which a client says a request of any method may be sent twice (an IETF draft,
# and the spelling before it); Go's net/http replays such requests on a stale connection too.
IDEMPOTENCY_KEY_HEADERS = frozenset((b"idempotency-key", b"x-idempotency-key"))


class Exchange:
    """Per-request facts recorded by the parsers, and where the request is now.

    Parser callbacks only fill these fields; the decisions that follow from them
    (framing, keep-alive, reuse) are made in ClientConnection and
    BackendConnection at a few named points.
    """

    __slots__ = (
        "backend",
        "body_buffer",
        "body_buffered",
        "body_received",
        "body_streamed",
        "bytes_out",
        "chunked",
        "client",
        "close_after",
        "conn_close",
        "conn_keep_alive",
        "connect_time",
        "content_length",
        "expect_continue",
        "failure",
        "first_byte",
        "forwarded_for",
        "head_bytes",
        "headers",
        "hop_names",
        "host",
        "is_head",
        "keep_alive",
        "method",
        "pending_since",
        "phase_ctx",
        "phases",
        "queue_wait",
        "real_ip",
        "redirects",
        "req",
        "request_done",
        "request_id",
        "resp",
        "response_started",
        "retries",
        "route",
        "server",
        "stale_retries",
        "started",
        "state",
        "status",
        "target",
        "trailers",
        "tried",
        "upgrade",
        "upstream",
        "upstream_time",
        "url",
        "version",
        "via",
    )

    def __init__(self, client: Downstream) -> None:
        self.client = client
        self.state = HEAD
        self.method = b""
        self.url = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.forwarded_for: bytes | None = None
        self.real_ip: bytes | None = None  # a trusted proxy's X-Real-IP (else the client address is sent)
        self.via: bytes | None = None
        # The client's Upgrade header; once routed, the protocols offered to the backend, or
        # None: the request goes on as a plain one (appliance/http/tunnel.py).
        self.upgrade: bytes | None = None
        # Facts from the Connection header; keep_alive is decided from them and the version.
        self.conn_close = False
        self.conn_keep_alive = False
        self.keep_alive = True
        self.hop_names: set[bytes] | None = None
        # A client error found while this request waited its turn, answered in order; then
        # the failure the exchange was answered with (the logging phase's `error`).
        self.failure: Exception | None = None
        self.head_bytes = 0
        self.is_head = False
        self.route: Any = None
        self.backend: Any = None
        self.upstream: Upstream | None = None
        # Body chunks that arrived before a backend connection was attached.
        self.body_buffer: list[bytes] = []
        self.body_buffered = 0
        self.body_received = 0
        # True once any body byte went to a backend: such a request can't be replayed.
        self.body_streamed = False
        self.request_done = False
        self.response_started = False
        self.close_after = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.retries = 0  # tries on another server after a server failure
        self.stale_retries = 0  # tries after a reused connection died unanswered
        self.redirects = 0
        self.tried: list[Any] = []  # servers that failed this request
        self.target = b""  # request target for the backend: url after the rule's rewrite
        self.pending_since = 0.0
        # What observers read when the exchange ends (appliance/observe). Times are loop
        # seconds: `started` is when the request began, the rest are durations.
        self.started = 0.0
        self.status = 0  # the status the client got; 0 if no response head went out
        self.bytes_out = 0  # bytes written to the client for this exchange
        self.server: Any = None  # the backend Server that answered (the last one tried)
        self.queue_wait = 0.0  # time spent in pending queues
        self.connect_time = 0.0  # time to open the backend connection, if opened for this request
        self.first_byte = 0.0  # request sent → response head received
        self.upstream_time = 0.0  # request sent → response complete
        # X-Request-Id: a trusted client's own, else made when the head goes to a backend
        # (or when a log line needs it first); see appliance/observe/request_id.py.
        self.request_id: bytes | None = None
        # The operator's phases (appliance/phases): the route's compiled dispatch once new_ctx
        # ran (else NO_PHASES, whose every phase is None), their ctx, and the views they saw.
        self.phases = NO_PHASES
        self.phase_ctx: Any = None
        self.req: Any = None  # the Request view, made when a phase first needs it
        self.resp: Any = None  # the ResponseHead view of what the client got, when a phase reads it

    def request_id_text(self) -> str:
        """The request id as text (`req.request_id`, the logs), made now if it has none yet:
        a log line or a phase may need it before the request goes to a backend."""
        rid = self.request_id
        if rid is None:
            rid = self.request_id = self.client.ctx.new_request_id()
        return rid.decode("latin-1") if rid is not None else "-"

    def transition(self, new: ExchangeState) -> None:
        """The only place that changes `state`; refuses moves the table does not allow."""
        self.state = _MOVES.check(self.state, new)

    def leave_queue(self, now: float) -> None:
        """Count the time since the exchange joined a pending queue (it may join again)."""
        if self.pending_since:
            self.queue_wait += now - self.pending_since
            self.pending_since = 0.0

    @property
    def finished(self) -> bool:
        return self.state is FINISHED

    def drop_body(self) -> None:
        """Make this a GET (a HEAD stays HEAD) without a body: an internal redirect's new request."""
        if not self.is_head:
            self.method = b"GET"
        if self.content_length is not None:
            self.headers = [(n, v) for n, v in self.headers if n.lower() != b"content-length"]
            self.content_length = None
        self.chunked = False
        self.trailers = None
        self.expect_continue = False
        self.body_buffer = []
        self.body_buffered = 0
        self.body_streamed = False  # nothing of the new request's is streamed: it may be replayed

    def body_held(self) -> bool:
        """The whole body (if any) is still here: no byte of it has left the proxy unkept."""
        return not self.body_streamed and (self.request_done or not (self.chunked or self.content_length))

    def replayable(self) -> bool:
        """Safe to send again: idempotent, and no body byte has left the proxy."""
        return self.method in IDEMPOTENT_METHODS and self.body_held()

    def replayable_on_stale(self) -> bool:
        """Safe to send again after a reused connection closed with no response byte.

        Replayable, or carrying an Idempotency-Key: the client promises that a second copy
        is harmless, which is what a stale connection risks (the backend may have read the
        request before closing).
        """
        return self.body_held() and (self.method in IDEMPOTENT_METHODS or any(
            name.lower() in IDEMPOTENCY_KEY_HEADERS for name, _ in self.headers))
