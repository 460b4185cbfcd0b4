"""One request/response pair crossing the proxy, and its state table."""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any

from appliance.phases.dispatch import NO_PHASES
from appliance.statemachine import Transitions

if TYPE_CHECKING:
    from appliance.http.downstream_api import Downstream
    from appliance.upstream.connection import BackendConnection


class ExchangeState(IntEnum):  # IntEnum: hashed in C, for the transition checks
    HEAD = 1  # request head being parsed
    WAITING_TURN = 2  # head parsed; started after the read that parsed it, and after earlier requests
    PENDING = 3  # in a backend's pending queue, waiting for a connection
    PROXYING = 4  # attached to a backend connection
    FINISHED = 5  # response complete, failed, or abandoned


_S = ExchangeState
_MOVES = Transitions("exchange", {
    _S.HEAD: (_S.WAITING_TURN, _S.FINISHED),
    _S.WAITING_TURN: (_S.PENDING, _S.PROXYING, _S.FINISHED),
    _S.PENDING: (_S.PROXYING, _S.FINISHED),
    # PENDING: retried after a reused connection died unanswered.
    _S.PROXYING: (_S.PENDING, _S.FINISHED),
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
        "upstream",
        "upstream_time",
        "url",
        "version",
        "via",
    )

    def __init__(self, client: Downstream) -> None:
        self.client = client
        self.state = _S.HEAD
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
        self.upstream: BackendConnection | None = None
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
        return self.state is _S.FINISHED

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
