"""HTTP/2 from clients: one H2Connection per connection, one H2Stream per request.

The connection owns the libnghttp2 session (appliance/h2/session.pyx, server side): bytes
from the client go into `receive`, whose events arrive here as `h2_*` calls, and what the
session wants written goes out after each callback (`_write_out`; a small response's frames
once per event-loop turn, `_write_later`, so one write carries the turn's answers). Each request stream is
a downstream like an HTTP/1 connection (appliance/http/downstream_base.py): its request
becomes the proxy's internal request (an Exchange, version "2.0"), goes through the same
built-in checks, phases and routing, and the backend side answers it through the same seam
(appliance/http/exchange.py, `Downstream`), which the stream frames as HEADERS, DATA and
trailers on its own stream id. Errors the proxy generates go out on that stream only.

Bodies stream both ways and are never held whole. Request DATA goes to the backend as it
arrives, and is `consume`d (the client's window reopened) only once the backend connection
took it without pausing: a slow backend closes the client's window, not our memory.
Response bytes go to `send_data`; above the write high-water mark the backend is paused
until the session reports the stream writable again, and a stream the client leaves with a
closed window that long is reset after `[limits] send_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from enum import IntEnum
from typing import TYPE_CHECKING

from appliance.deadline import Deadline
from appliance.h2.session import CANCEL, INTERNAL_ERROR, H2Error, H2Session
from appliance.http import errors, grpc
from appliance.http.downstream_base import DownstreamBase
from appliance.http.exchange import (
    BODY_NONE,
    FINISHED,
    PAUSE_UPSTREAM_FULL,
    WAITING_TURN,
    Exchange,
    Fields,
)
from appliance.http.headers import (
    HOP_BY_HOP,
    REQ_CONTENT_LENGTH,
    REQ_EXPECT,
    REQ_FORWARDED_FOR,
    REQ_HOST,
    REQ_REAL_IP,
    REQ_REQUEST_ID,
    REQ_VIA,
    REQUEST_ACTIONS,
    SSL_PREFIXES,
    allowed_request_trailer,
    last_chunk,
)
from appliance.http.target import HASH, valid_host
from appliance.observe import metrics
from appliance.phases import Response
from appliance.statemachine import Transitions
from appliance.timerwheel import UNFILED

if TYPE_CHECKING:
    from appliance.config.schema import Http2Config
    from appliance.context import WorkerContext
    from appliance.tls.contexts import TlsSite
    from appliance.tls.session import TlsConnection

log = logging.getLogger("rproxyd.client")

# Request fields HTTP/2 treats on its own, beside REQUEST_ACTIONS' (the same one dict lookup per
# field): cookie crumbs, and what makes a request gRPC (issue 17, item 4). A request without
# these pays nothing for them.
_COOKIE, _CONTENT_TYPE, _GRPC_TIMEOUT = 101, 102, 103
_ACTIONS = {**REQUEST_ACTIONS, b"cookie": _COOKIE, b"content-type": _CONTENT_TYPE,
            b"grpc-timeout": _GRPC_TIMEOUT}

# The connection preface a prior-knowledge (h2c) client opens with (RFC 9113 3.4); its first
# line is what an HTTP/1 parser sees as a request for "HTTP/2.0".
PREFACE_LINE = b"PRI * HTTP/2.0\r\n\r\n"


class H2State(IntEnum):  # IntEnum: hashed in C, for the transition checks
    OPEN = 1  # streams may be opened
    NOTIFIED = 2  # the shutdown notice went out (the worker drains): GOAWAY follows
    DRAINING = 3  # GOAWAY with the last stream id went out: the open streams finish, then close
    CLOSED = 4


OPEN, NOTIFIED, DRAINING, CLOSED = H2State

# A response body chunk up to this size (one DATA frame at the default SETTINGS_MAX_FRAME_SIZE)
# is framed and written at the end of the event-loop turn; a larger one at once.
SMALL_BODY = 16384
_MOVES = Transitions("h2 connection", {
    OPEN: (NOTIFIED, CLOSED),
    NOTIFIED: (DRAINING, CLOSED),
    DRAINING: (CLOSED,),
})


def _codes():
    """The binding (appliance/h2/session.pyx), imported when the first HTTP/2 connection needs it."""
    from appliance.h2 import session
    return session


class H2Connection:  # uvloop calls protocol methods by name: no asyncio.Protocol base
    """The protocol of one HTTP/2 client connection: the session and its streams."""

    __slots__ = (
        "config",
        "ctx",
        "forwarded_tail",
        "held",
        "peer_ip",
        "peer_port",
        "proto",
        "receiving",
        "send_deadline",
        "session",
        "slot",
        "state",
        "streams",
        "tls",
        "transport",
        "trusted",
        "when",
        "write_paused",
        "write_soon",
    )

    def __init__(self, ctx: WorkerContext, config: Http2Config, proto: bytes,
                 tls: TlsSite | TlsConnection | None) -> None:
        self.ctx = ctx
        self.config = config
        self.proto = proto
        self.tls = tls
        self.state = OPEN
        self.transport: asyncio.Transport | None = None
        self.session = None
        self.streams: dict[int, H2Stream] = {}
        self.receiving = False  # inside session.receive: output is written once it returns
        self.write_paused = False
        # Response frames are written once per event-loop turn (_write_later): the answers of
        # every stream whose backend read in this turn go out in one writelines.
        self.write_soon = False  # a _write_turn is scheduled
        self.held: list | None = None  # frames taken from the session, not yet written
        self.peer_ip = b""
        self.peer_port = 0
        self.trusted = True
        self.forwarded_tail = b""
        self.send_deadline: Deadline | None = None
        # The idle deadline (no stream open): an entry of the worker's timer wheel, as an
        # HTTP/1 connection is (appliance/timerwheel.py).
        self.when: float | None = None
        self.slot = UNFILED

    @classmethod
    def take_over(cls, client: object, config: Http2Config, transport: asyncio.Transport,
                  data: bytes) -> H2Connection:
        """Turn an HTTP/1 ClientConnection that found h2 (ALPN, or the h2c preface in `data`)
        into an H2Connection on the same transport, with the peer facts it already took."""
        conn = cls(client.ctx, config, client.listener.proto, client.tls)
        conn.peer_ip, conn.peer_port = client.peer_ip, client.peer_port
        conn.trusted, conn.forwarded_tail = client.trusted, client.forwarded_tail
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if data:
            conn.data_received(data)
        return conn

    # ----------------------------------------------------------------- state
    def _transition(self, new: H2State) -> None:
        self.state = _MOVES.check(self.state, new)

    # --------------------------------------------------------- asyncio hooks
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        limits = self.ctx.limits
        transport.set_write_buffer_limits(limits.write_high_watermark, limits.write_low_watermark)
        config = self.config
        self.session = H2Session(
            self, True,
            max_concurrent_streams=config.max_concurrent_streams,
            initial_window_size=config.initial_window_size,
            connection_window_size=config.connection_window_size,
            max_frame_size=config.max_frame_size,
            max_header_list_size=config.max_header_list_size,
            high_water=limits.write_high_watermark,
            low_water=limits.write_low_watermark,
        )
        self.ctx.clients.add(self)
        self.ctx.observer.h2_connection(True)
        self.ctx.wheel.set(self, self.ctx.keepalive_timeout)
        self._write_out()  # our SETTINGS

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not CLOSED:
            self._transition(CLOSED)
            self.ctx.observer.h2_connection(False)
        self.ctx.wheel.cancel(self)
        if self.send_deadline is not None:
            self.send_deadline.release()
            self.send_deadline = None
        self.ctx.clients.discard(self)
        for stream in list(self.streams.values()):
            stream.gone()
        self.streams.clear()
        self.session = None  # the session refers back to this connection

    def data_received(self, data: bytes) -> None:
        if self.state is CLOSED:
            return
        self.receiving = True
        try:
            self.session.receive(data)
        except H2Error as exc:
            # Bad frames, a flood or too many glitches: nghttp2 queued a GOAWAY; send it and go.
            self.receiving = False
            log.info("client %s: HTTP/2 connection closed: %s", self.peer_ip.decode(), exc)
            self.ctx.observer.h2_goaway(exc.code or INTERNAL_ERROR)
            self._write_out()
            self.close()
            return
        finally:
            self.receiving = False
        self._write_out()

    def eof_received(self) -> bool | None:
        # The client sends nothing more: its streams are cut (it cannot end their requests).
        self.close()
        return False

    def pause_writing(self) -> None:
        """The client does not read: what nghttp2 holds stays there (streams see it queued)."""
        self.write_paused = True
        deadline = self.send_deadline
        if deadline is None:
            deadline = self.send_deadline = Deadline(self.ctx.loop, self._on_send_timeout)
        deadline.set(self.ctx.limits.send_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.send_deadline is not None:
            self.send_deadline.clear()
        self._write_out()

    def _on_send_timeout(self) -> None:
        self.ctx.observer.client_timeout(metrics.T_SEND)
        self.ctx.timeout_log.log("client %s: send timeout", self.peer_ip.decode())
        self.close(force=True)

    def on_expiry(self) -> None:
        """No stream open for keepalive_timeout (called by the timer wheel): close, as nginx does."""
        if self.streams:
            return
        self.session.goaway(0)
        self.ctx.observer.h2_goaway(0)
        self._write_out()
        self.close()

    # ----------------------------------------------------------- output
    def _write_out(self) -> None:
        """Write what the session has queued; close once it wants neither to read nor write."""
        if self.receiving or self.state is CLOSED or self.write_paused:
            return  # written when receive returns, or when the client reads again
        session = self.session
        out = session.data_to_send()
        held = self.held
        if held is not None:
            self.held = None
            if out:
                held.extend(out)
            out = held
        if out:
            self.transport.writelines(out)
        if session.want_close() or (self.state is DRAINING and not self.streams):
            self.close()

    def _write_later(self, frame: bool) -> None:
        """The data path's output: written at the end of this event-loop turn, together with
        whatever other streams answer in it (one write instead of one per stream and per
        backend read). `frame`: take the frames from the session now (the stream's queue must
        drop now: a finished response's queue, or one past the high-water mark), else only
        at the turn's end, so a small response's body and end share one DATA frame."""
        if self.receiving or self.state is CLOSED or self.write_paused:
            return  # written when receive returns, or when the client reads again
        if frame:
            out = self.session.data_to_send()
            if out:
                if self.held is None:
                    self.held = out
                else:
                    self.held.extend(out)
        if not self.write_soon:
            self.write_soon = True
            self.ctx.loop.call_soon(self._write_turn)

    def _write_turn(self) -> None:
        self.write_soon = False
        self._write_out()

    # ------------------------------------------------------ session events
    def h2_request(self, stream_id: int, method: bytes, scheme: bytes | None, authority: bytes | None,
                   path: bytes | None, headers: Fields, end_stream: bool) -> None:
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.ctx.wheel.cancel(self)
        self.ctx.observer.h2_stream(True)
        stream.request(method, authority, path, headers, end_stream)

    def h2_header_overflow(self, stream_id: int) -> None:
        """The request's header list passed max_header_list_size: 431, as nginx answers."""
        fields, body = _error_parts(errors.HeadTooLarge("request header list too large"), False)
        self.session.submit_response(stream_id, 431, fields, False)
        self.session.send_data(stream_id, body)
        self.session.end_stream(stream_id)

    def h2_data(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            self.session.consume(stream_id, len(data))
            return
        stream.request_data(data)

    def h2_trailers(self, stream_id: int, headers: Fields) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.exchange.trailers = [(n, v) for n, v in headers if allowed_request_trailer(n)]

    def h2_end_stream(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.request_end()

    def h2_stream_closed(self, stream_id: int, error_code: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.ctx.observer.h2_stream(False)
        stream.gone()
        if not self.streams and self.state is not DRAINING:
            self.ctx.wheel.set(self, self.ctx.keepalive_timeout)
        # A draining connection closes once its last stream is done, in _write_out: this runs
        # inside the session's own send or receive, before the stream's last frame is written.

    def h2_writable(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.writable()

    def h2_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The client is going away: what it opened is still answered, then the connection closes."""

    # ------------------------------------------------------------ ending
    def notice(self) -> None:
        """The worker began to drain: the shutdown notice (GOAWAY with the largest stream id),
        so the client opens no more streams here, while ones in flight still arrive."""
        if self.state is OPEN:
            self._transition(NOTIFIED)
            self.session.shutdown_notice()
            self._write_out()

    def shutdown(self) -> None:
        """Graceful stop: GOAWAY with the last stream id, finish the open streams, close."""
        if self.state is OPEN:
            self.notice()
        if self.state is not NOTIFIED:
            return
        self._transition(DRAINING)
        self.session.goaway(0)
        self.ctx.observer.h2_goaway(0)
        self._write_out()
        if not self.streams:
            self.close()

    def close(self, force: bool = False) -> None:
        if self.state is CLOSED:
            return
        self._transition(CLOSED)
        self.ctx.observer.h2_connection(False)
        self.ctx.wheel.cancel(self)
        if self.send_deadline is not None:
            self.send_deadline.cancel()
        for stream in list(self.streams.values()):
            stream.gone()
        self.streams.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.held is not None and not force:
            transport.writelines(self.held)  # the frames of streams that finished in this turn
            self.held = None
        if force:
            transport.abort()
        else:
            transport.close()

    def local_address(self) -> tuple[str, int] | None:
        local = self.transport.get_extra_info("sockname") if self.transport is not None else None
        return (local[0], local[1]) if local else None


def _error_parts(failure: errors.ProxyFailure, head_only: bool) -> tuple[Fields, bytes]:
    """The header fields and body of the proxy's error response, as HTTP/2 sends them."""
    raw = errors.error_response(failure, False, head_only)
    head, _, body = raw.partition(b"\r\n\r\n")
    fields = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        name = name.lower()
        if name not in HOP_BY_HOP:
            fields.append((name, value))
    return fields, body


class H2Stream(DownstreamBase):
    """One request stream of an H2Connection: a downstream behind the seam."""

    __slots__ = (
        "conn",
        "content_type",
        "deadline",
        "dropping",
        "ended",
        "exchange",
        "owed",
        "pauses",
        "stall",
        "stream_id",
    )

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        DownstreamBase.__init__(self, conn.ctx, conn.tls)
        self.conn = conn
        self.stream_id = stream_id
        self.peer_ip, self.peer_port = conn.peer_ip, conn.peer_port
        self.trusted, self.forwarded_tail = conn.trusted, conn.forwarded_tail
        self.exchange: Exchange | None = None
        self.ended = False  # our half of the stream is submitted complete
        self.dropping = False  # the request body is not wanted (an internal redirect): consumed, dropped
        self.owed = 0  # request body bytes handed on but not yet consumed (the window stays shut)
        self.pauses = 0  # PAUSE_* reasons the backend side gave
        # The send timeout of a stream the client leaves with a closed window (made when needed).
        self.stall: Deadline | None = None
        # The request's content-type, kept for the error path: a gRPC request's (grpc.is_grpc)
        # errors are gRPC statuses. Tested there, so other requests pay nothing for it.
        self.content_type: bytes | None = None
        # Its grpc-timeout, when it sent one: the call's deadline (appliance/http/grpc.py).
        self.deadline: Deadline | None = None

    @property
    def transport(self) -> asyncio.Transport | None:
        """The connection's transport, for what the access log reads of the TLS session."""
        return self.conn.transport

    # ------------------------------------------------------ request side
    def request(self, method: bytes, authority: bytes | None, path: bytes | None,
                headers: Fields, end_stream: bool) -> None:
        """The request head: the internal request, checked, then started as an HTTP/1 one is."""
        exchange = self.exchange = Exchange(self)
        exchange.started = self.ctx.loop.time()
        exchange.version = "2.0"
        exchange.method = method
        exchange.is_head = method == b"HEAD"
        exchange.url = path or b""
        exchange.transition(WAITING_TURN)
        exchange.request_done = end_stream
        try:
            timeout = self._note_headers(exchange, authority, headers)
            if timeout is not None and grpc.is_grpc(self.content_type):
                self._set_deadline(timeout)
            if method == b"CONNECT":
                raise errors.MethodNotAllowed(set())  # nginx answers 405 too
            if exchange.host is None or not valid_host(exchange.host):
                raise errors.ClientFault("missing or invalid :authority")
            if exchange.url[:1] != b"/" and not (exchange.url == b"*" and method == b"OPTIONS"):
                raise errors.ClientFault("invalid :path")
            if HASH in exchange.url:
                raise errors.ClientFault("fragment in the request target")
            limit = self.ctx.limits.max_body_bytes
            if limit and (exchange.content_length or 0) > limit:
                raise errors.BodyTooLarge("declared body too large")
        except errors.ProxyFailure as failure:
            exchange.failure = failure
        if not end_stream and exchange.content_length is None:
            exchange.chunked = True  # an HTTP/1.1 backend gets the body chunked
        if exchange.content_length is None and not exchange.chunked:
            exchange.expect_continue = False
        self._start(exchange)

    def _note_headers(self, exchange: Exchange, authority: bytes | None, headers: Fields) -> bytes | None:
        """Record the request's fields as the HTTP/1 parser callbacks do (nghttp2 refused
        connection-specific ones already); cookie crumbs joined with "; " (RFC 9113 8.2.3).
        Returns the grpc-timeout value, if any (passed on too: the backend learns the deadline)."""
        kept: Fields = []
        cookies: list[bytes] = []
        host = authority
        timeout = None
        for name, value in headers:
            action = _ACTIONS.get(name)
            if action is None:
                if name[:6] not in SSL_PREFIXES:
                    kept.append((name, value))
            elif action == _COOKIE:
                cookies.append(value)
            elif action == _CONTENT_TYPE:
                self.content_type = value
                kept.append((name, value))
            elif action == _GRPC_TIMEOUT:
                timeout = value
                kept.append((name, value))
            elif action == REQ_HOST:
                if host is None:
                    host = value
            elif action == REQ_CONTENT_LENGTH:
                exchange.content_length = int(value)
                kept.append((name, value))
            elif action == REQ_EXPECT:
                if value.lower() != b"100-continue":
                    raise errors.ExpectationFailed("unsupported Expect")
                exchange.expect_continue = True
            elif action == REQ_FORWARDED_FOR:
                exchange.forwarded_for = (
                    value if exchange.forwarded_for is None else exchange.forwarded_for + b", " + value)
            elif action == REQ_VIA:
                exchange.via = value if exchange.via is None else exchange.via + b", " + value
            elif action == REQ_REQUEST_ID and self.trusted and exchange.request_id is None:
                exchange.request_id = value
            elif (action == REQ_REAL_IP and self.trusted and exchange.real_ip is None
                  and not self.ctx.trusted.everyone):
                exchange.real_ip = value
            # Anything else (TE: trailers, hop-by-hop): not passed on.
        if cookies:
            kept.append((b"cookie", b"; ".join(cookies)))
        if host is not None:
            exchange.host = host
            kept.insert(0, (b"host", host))
        exchange.headers = kept
        return timeout

    def _set_deadline(self, value: bytes) -> None:
        """A gRPC call's grpc-timeout: the longest the proxy works on it, queue, phases and
        backend included. The backend's read_timeout still bounds each wait for its bytes, so
        the call ends at whichever comes first; a malformed value is the client's fault (400,
        which gRPC's HTTP mapping makes INTERNAL)."""
        try:
            seconds = grpc.parse_timeout(value, math.inf)
        except grpc.MalformedTimeout as exc:
            raise errors.ClientFault(str(exc)) from None
        if seconds <= grpc.MAX_DEADLINE:
            deadline = self.deadline = Deadline(self.ctx.loop, self._on_deadline)
            deadline.set(seconds)

    def _on_deadline(self) -> None:
        """grpc-timeout passed: the backend's stream is cancelled and the client gets
        DEADLINE_EXCEEDED, trailers-only, or as trailers if the response had started."""
        exchange = self.exchange
        if exchange is None or exchange.finished or self._closed():
            return
        self._detach_pending(exchange)
        self._fail_current(exchange, errors.BackendTimeout("grpc-timeout passed"))

    def request_data(self, data: bytes) -> None:
        """One DATA frame of the request body."""
        exchange = self.exchange
        size = len(data)
        exchange.body_received += size
        limit = self.ctx.limits.max_body_bytes
        if exchange.finished or self.dropping:
            self.conn.session.consume(self.stream_id, size)  # answered: the rest goes nowhere
            return
        if limit and exchange.body_received > limit:
            self.conn.session.consume(self.stream_id, size)
            self._fail_current(exchange, errors.BodyTooLarge("body too large"))
            return
        self.owed += size
        upstream = exchange.upstream
        if upstream is None:
            # Kept until a backend connection is attached; not consumed, so the client's window
            # bounds what waits here.
            exchange.body_buffer.append(data)
            exchange.body_buffered += size
            return
        exchange.body_streamed = True
        if exchange.chunked:
            upstream.send_request_chunk(data)
        else:
            upstream.send_request_bytes(data)
        self._pay()

    def _pay(self) -> None:
        """Reopen the client's window for what the backend took, unless it asked for a pause."""
        if self.owed and not self.pauses & PAUSE_UPSTREAM_FULL and self.exchange.upstream is not None:
            owed, self.owed = self.owed, 0
            self.conn.session.consume(self.stream_id, owed)
            self.conn._write_out()

    def request_end(self) -> None:
        exchange = self.exchange
        exchange.request_done = True
        if exchange.finished or self.dropping:
            return
        upstream = exchange.upstream
        if upstream is not None and exchange.chunked:
            upstream.send_request_bytes(last_chunk(exchange.trailers))

    def _drop_request_body(self, exchange: Exchange) -> None:
        """An internal redirect while the body still arrives: the new request is a GET without
        one, complete now; what is held or still comes of the old body is consumed and dropped."""
        self.dropping = True
        exchange.request_done = True
        if self.owed:
            self.conn.session.consume(self.stream_id, self.owed)
            self.owed = 0

    # ------------------------------------------------ the seam (Downstream)
    def local_address(self) -> tuple[str, int] | None:
        return self.conn.local_address()

    def send_continue(self, exchange: Exchange) -> None:
        if exchange.expect_continue and not exchange.request_done:
            exchange.expect_continue = False
            self.conn.session.submit_informational(self.stream_id, 100, [])
            self.conn._write_out()

    def informational(self, exchange: Exchange, status: int, reason: bytes, headers: Fields) -> None:
        if status == 100:
            self.send_continue(exchange)
            return
        self.conn.session.submit_informational(self.stream_id, status, _fields(headers))
        self.conn._write_out()

    def start_response(self, exchange: Exchange, status: int, reason: bytes, headers: Fields,
                       version: str, via: bytes | None, body: int) -> None:
        """Submit the response head (status only, no reason; hop-by-hop headers dropped)."""
        self.body_filter = None
        if exchange.phases.response_side:
            framed = self._response_phases(exchange, status, reason, headers, body)
            if framed is None:
                return  # response_filter failed: the stream ends with its error
            status, reason, headers, body = framed
        fields = _fields(headers)
        own_via = self.ctx.via
        if own_via:
            prior = via + b", " if via else b""
            fields.append((b"via", b"%s%s %s" % (prior, version.encode(), own_via)))
        elif via:
            fields.append((b"via", via))
        exchange.response_started = True
        exchange.status = status
        self.ended = body == BODY_NONE
        self.conn.session.submit_response(self.stream_id, status, fields, self.ended)

    def _replace_response(self, exchange: Exchange, failure: errors.PhaseFailed) -> None:
        """response_filter failed: the stream ends with the error (the backend's body, still
        arriving, is dropped)."""
        self.fail(exchange, failure)

    def send_body(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.finished or not exchange.response_started:
            return
        if self.body_filter is not None:
            data = self._filter_body(exchange, data, False)
            if not data:
                return  # held back by the filter (or it failed: the stream was reset)
        self.sent += len(data)
        conn = self.conn
        session = conn.session
        queued = session.send_data(self.stream_id, data)
        if queued <= SMALL_BODY:
            # A small body waits for the turn's end (its response usually finishes in the same
            # read: body and end then go in one DATA frame, with other streams' answers).
            conn._write_later(False)
            return
        # A large one is written now, a read at a time, as before: held to the turn's end as
        # well, the 1 MiB GET lost 40% of its bytes per CPU-second (perf/README.md's log).
        conn._write_out()
        if queued > session.high_water and not self.write_paused:
            # The client's window (or its socket) does not keep up: pause the backend, and
            # give the stream send_timeout to move again.
            self.write_paused = True
            upstream = exchange.upstream
            if upstream is not None:
                upstream.pause_reading()
            self._arm_stall()

    def _arm_stall(self) -> None:
        stall = self.stall
        if stall is None:
            stall = self.stall = Deadline(self.ctx.loop, self._on_stall)
        stall.set(self.ctx.limits.send_timeout)

    def writable(self) -> None:
        """The stream's queue dropped below the low-water mark: resume the backend."""
        if not self.write_paused:
            return
        self.write_paused = False
        if self.stall is not None:
            self.stall.clear()
        exchange = self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.resume_reading()

    def _on_stall(self) -> None:
        """The client left the stream's window shut for send_timeout: reset it, free the backend."""
        exchange = self.exchange
        self.ctx.observer.client_timeout(metrics.T_SEND)
        self.ctx.timeout_log.log("client %s: HTTP/2 stream %d send timeout", self.peer_ip.decode(),
                                 self.stream_id)
        if exchange is not None and not exchange.finished:
            self.abort_response(exchange)
        else:
            self._reset()

    def flush(self) -> None:
        self.conn._write_later(False)

    def finish(self, exchange: Exchange, trailers: Fields | None) -> None:
        if exchange.finished:
            return
        if self.body_filter is not None:
            # The filter's last call (end=True) may return the bytes it held back.
            tail = self._filter_body(exchange, b"", True)
            self.body_filter = None
            if tail:
                self.send_body(tail)
        if exchange.finished:
            return
        if not self.ended:
            self.ended = True
            self.conn.session.end_stream(self.stream_id, _fields(trailers) if trailers else None)
        self._finish(exchange, True)
        conn = self.conn
        conn._write_later(True)
        if conn.state is not CLOSED and conn.session.queued(self.stream_id):
            # The rest waits for the client's window: it has send_timeout to open it (the
            # backend is done, so nothing else would ever end a stream whose window stays shut).
            self._arm_stall()

    def redirect(self, exchange: Exchange, target: bytes) -> None:
        DownstreamBase.redirect(self, exchange, target)
        self.conn._write_out()

    def pause_reading(self, reason: int) -> None:
        self.pauses |= reason

    def resume_reading(self, reason: int) -> None:
        self.pauses &= ~reason
        self._pay()

    def response_splice_target(self) -> asyncio.Transport | None:
        return None  # HTTP/2 frames every body byte

    def response_spliced(self, size: int) -> None:
        self.sent += size

    def response_splice_blocked(self, blocked: bool) -> None:
        """Never called: no splice to an HTTP/2 stream."""

    def switch_protocols(self, exchange: Exchange, reason: bytes, headers: Fields, via: bytes | None,
                         protocol: bytes, backend: asyncio.Transport, rest: bytes,
                         pipes: object) -> None:
        """Never called: an HTTP/2 request offers no Upgrade (it is connection-specific)."""
        backend.close()
        self.fail(exchange, errors.BadBackendResponse("101 to an HTTP/2 request"))

    def close(self, force: bool = False) -> None:
        """The backend side gave up on the client (its splice target went away): reset the stream."""
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            self._abandon(exchange)
        self._reset()

    # ------------------------------------------------------ framing hooks
    def _send_error(self, exchange: Exchange, failure: errors.ProxyFailure, keep_alive: bool) -> None:
        self.ended = True
        if grpc.is_grpc(self.content_type):
            self._respond(exchange, 200, grpc.failure_headers(failure), b"")
            return
        fields, body = _error_parts(failure, exchange.is_head)
        self._respond(exchange, failure.status, fields, body)

    def _send_answer(self, exchange: Exchange, response: Response, keep_alive: bool) -> None:
        self.ended = True
        if grpc.is_grpc(self.content_type) and not grpc.has_status(response.headers.raw):
            # A phase's answer to a gRPC call, as any proxy's would be read: its HTTP status
            # by gRPC's mapping (401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 429 UNAVAILABLE...).
            self._respond(exchange, 200, grpc.status_headers(response.status), b"")
            return
        fields = _fields(response.headers.raw)
        if response.status not in (204, 304):
            fields.append((b"content-length", b"%d" % len(response.body)))
        self._respond(exchange, response.status, fields, b"" if exchange.is_head else response.body)

    def _respond(self, exchange: Exchange, status: int, fields: list, body: bytes) -> None:
        """A whole answer of the proxy's own (an error, a phase's response): head, body, end."""
        session = self.conn.session
        session.submit_response(self.stream_id, status, fields, not body)
        if body:
            self.sent += len(body)
            session.send_data(self.stream_id, body)
            session.end_stream(self.stream_id)
        self._finish(exchange, True)
        self.conn._write_out()

    def _closed(self) -> bool:
        return self.conn.state is CLOSED or self.stream_id not in self.conn.streams

    def response_keep_alive(self, exchange: Exchange) -> bool:
        return True  # the connection outlives its streams

    def _finish(self, exchange: Exchange, keep_alive: bool) -> None:
        if not exchange.finished:
            exchange.transition(FINISHED)
        exchange.upstream = None
        # Answered before the request body ended: what still comes is consumed and dropped
        # (request_data), not reset, so the response queued ahead of it is not lost.
        self._report(exchange)
        if self.stall is not None:
            self.stall.clear()
        if self.deadline is not None:
            self.deadline.clear()

    def abort_response(self, exchange: Exchange) -> None:
        """The response broke after it started: the client sees the stream reset, others go on.
        A gRPC call whose client still reads ends with the failure's status as trailers instead
        (DEADLINE_EXCEEDED for a backend timeout...): a reset only says CANCELLED."""
        exchange.transition(FINISHED)
        upstream = exchange.upstream
        exchange.upstream = None
        if upstream is not None:
            upstream.abandon()
        failure = exchange.failure
        if failure is None:
            failure = exchange.failure = errors.BadBackendResponse("response cut")
        self._report(exchange)
        if (not self.ended and not self.write_paused and isinstance(failure, errors.ProxyFailure)
                and grpc.is_grpc(self.content_type) and not self._closed()):
            self.ended = True
            self.conn.session.end_stream(self.stream_id, grpc.failure_trailers(failure))
            self.conn._write_out()
            return
        self._reset()

    def _reset(self) -> None:
        """RST_STREAM(CANCEL): this stream ends here, the connection and its others go on."""
        conn = self.conn
        if conn.state is CLOSED or self.stream_id not in conn.streams:
            return
        conn.session.reset(self.stream_id, CANCEL)
        conn._write_out()

    def gone(self) -> None:
        """The stream closed (reset by the client, or the connection ended): release the exchange."""
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            self._abandon(exchange)
        if self.stall is not None:
            self.stall.release()
            self.stall = None
        if self.deadline is not None:
            self.deadline.release()
            self.deadline = None


def _fields(headers: Fields) -> Fields:
    """Header fields for HTTP/2: names lowercase, connection-specific ones dropped (RFC 9113 8.2.2)."""
    return [(name.lower(), value) for name, value in headers if name.lower() not in HOP_BY_HOP]
