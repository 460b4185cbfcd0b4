"""The backend side over HTTP/2: one H2BackendConnection per connection, one H2Stream per request.

A backend with `protocol = "h2"` gets these instead of BackendConnection (appliance/upstream/
pool.py, Server.connect). The connection is a BackendConnection to the pool (a subclass, so
the compiled pool's typed calls reach it), with its own meaning for the pool's words:
- IDLE means "can open another stream": it sits in its server's idle stack while it has room
  under the server's SETTINGS_MAX_CONCURRENT_STREAMS, so the pool's dispatch and queues work
  unchanged and count streams, not connections; a connection with no room leaves the stack
  and comes back (pool.on_idle) when a stream ends. It never turns ACTIVE: `server.active`
  counts its open streams instead (least-conn balances on streams).
- GOAWAY from the server takes it out of the stack; the streams the server did not process
  (ids above its last stream id, closed by nghttp2 with REFUSED_STREAM) are sent again on
  another connection, whatever their method (RFC 9113 section 8.7), if their body is still
  here; the connection closes once its last stream ends.
Each stream is the exchange's `Upstream` (appliance/http/exchange.py) and drives its
`Downstream` as BackendConnection does, from the binding's events (appliance/h2/session.pyx).
The request head is the one the HTTP/1 path builds (RequestHead: the route's header policy,
upstream_request_filter, X-Forwarded-*, Via, X-Request-Id), turned into an h2 header list.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from appliance.h2.session import CANCEL, REFUSED_STREAM, H2Error, H2Session

from appliance.http import errors
from appliance.http.exchange import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    PAUSE_BUFFER_FULL,
    PAUSE_UPSTREAM_FULL,
    PENDING,
    PROXYING,
)
from appliance.observe.errorlog import about
from appliance.phases.calls import reason
from appliance.upstream.connection import CONNECTING, IDLE, BackendConnection

if TYPE_CHECKING:
    import asyncio

    from appliance.http.exchange import Exchange
    from appliance.upstream.server_view import ServerView

log = logging.getLogger("rproxyd.backend")

# Tries of a request the server did not process (GOAWAY, REFUSED_STREAM), counted with the
# stale-connection retries (Exchange.stale_retries): like them, no server failure.
MAX_UNPROCESSED_RETRIES = 2

# Request headers that are the HTTP/1 connection's and not the request's (RFC 9113 section
# 8.2.2): never sent on a stream. `host` becomes :authority.
_NOT_FORWARDED = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                            b"upgrade", b"host", b"te"))
# TE is hop-by-hop: it says what rproxyd itself accepts, and rproxyd takes a backend's
# trailers (relayed on, or dropped for a client that cannot have them). Sent on every
# stream, as nginx's grpc_pass does: gRPC servers refuse a request without it (grpc-core
# resets the stream, INTERNAL_ERROR), whatever the client told us.
_TE_TRAILERS = (b"te", b"trailers")


def h2_request(head: bytes) -> tuple[bytes, bytes, bytes | None, list[tuple[bytes, bytes]]]:
    """(method, path, authority, headers) of an HTTP/1.1 request head as RequestHead made it."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    path = rest.rpartition(b" ")[0]
    authority = None
    headers = [_TE_TRAILERS]
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip()
        if name in _NOT_FORWARDED:
            if name == b"host":
                authority = value
            continue
        headers.append((name, value))
    return method, path, authority, headers


class H2Stream:
    """One request on an H2BackendConnection: the exchange's Upstream."""

    __slots__ = ("body_mode", "body_seen", "conn", "discard", "exchange", "head_done", "held",
                 "id", "reading_paused", "to_send", "trailers")

    def __init__(self, conn: H2BackendConnection, exchange: Exchange) -> None:
        self.conn = conn
        self.exchange = exchange
        self.id = 0
        self.head_done = False
        self.body_mode = BODY_NONE
        self.body_seen = 0
        self.held = 0  # received bytes not consumed while the client does not read
        self.reading_paused = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.discard: bytes | None = None  # as BackendConnection.discard: retry (b"") or redirect
        # Content-Length body bytes still to come from the client: the stream ends after the
        # last (the client side signals the end of a chunked body only).
        self.to_send = exchange.content_length or 0

    # ------------------------------------------------------------ Upstream
    def send_request_bytes(self, data: bytes) -> None:
        exchange = self.exchange
        conn = self.conn
        if exchange is None:
            return
        if exchange.chunked:
            conn.session.end_stream(self.id, exchange.trailers)  # `data` is the last chunk's framing
        else:
            self._send(data)
            self.to_send -= len(data)
            if self.to_send <= 0:
                conn.session.end_stream(self.id)
        conn.flush()

    def send_request_chunk(self, data: bytes) -> None:
        if self.exchange is not None:
            self._send(data)
            self.conn.flush()

    def _send(self, data: bytes) -> None:
        if self.conn.session.send_data(self.id, data) > self.conn.session.high_water:
            self.exchange.client.pause_reading(PAUSE_UPSTREAM_FULL)  # resumed by h2_writable

    def pause_reading(self) -> None:
        """The client does not keep up: stop reopening this stream's window."""
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.held:
            self.conn.session.consume(self.id, self.held)
            self.held = 0
            self.conn.flush()

    def request_splice_target(self, remaining: int) -> None:
        return None  # the body goes in DATA frames

    def request_splice_waiting(self, waiting: bool) -> None:
        pass

    def abandon(self) -> None:
        """The client side is done with the exchange: cancel the stream, keep the connection."""
        if self.exchange is not None:
            self.exchange = None
            self.conn.session.reset(self.id, CANCEL)
            self.conn.flush()

    def close(self) -> None:
        self.abandon()


class H2BackendConnection(BackendConnection):
    """One HTTP/2 connection to a server, carrying many exchanges as streams."""

    __slots__ = ("draining", "receiving", "session", "streams", "touched", "write_blocked")

    def __init__(self, server: ServerView) -> None:
        super().__init__(server)
        self.session: H2Session | None = None
        self.streams: dict[int, H2Stream] = {}
        self.draining = False  # GOAWAY received or sent: no new stream
        self.write_blocked = False
        self.receiving = False  # inside session.receive(): the binding's events run; flush after
        self.touched: list[H2Stream] = []  # streams that got body bytes in this read (flushed after)

    # --------------------------------------------------------- asyncio hooks
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        limits = self.server.pool.limits
        transport.set_write_buffer_limits(limits.write_high_watermark, limits.write_low_watermark)
        self.session = H2Session(self, False)
        self.flush()

    def connected(self) -> None:
        if self.state is not CONNECTING:
            return
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            server = self.server
            log.error("backend %s did not choose h2 by ALPN (protocol = \"h2\")", server.address)
            server.retry_at = server.pool.loop.time() + server.config.retry_delay_max
            server.note_failure(server.pool.loop.time())
            self.close()  # connection_lost does the accounting
            return
        super().connected()

    def data_received(self, data: bytes) -> None:
        if self.streams:
            self.read_deadline.set(self.read_timeout)
        self.receiving = True
        try:
            self.session.receive(data)
        except H2Error as exc:
            log.warning("backend %s: HTTP/2 %s", self.server.address, exc)
            self.receiving = False
            self.flush()
            self.close()
            return
        finally:
            self.receiving = False
        touched, self.touched = self.touched, []
        for stream in touched:
            if stream.exchange is not None:
                stream.exchange.client.flush()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self._go_down()
        if previous is None:
            return
        streams, self.streams = self.streams, {}
        self.server.on_closed(self, previous)
        for stream in streams.values():
            self.server.active -= 1
            if stream.exchange is not None and not stream.exchange.finished:
                self._stream_failed(stream, errors.BackendRefused(
                    f"backend {self.server.address} closed the connection"))

    def pause_writing(self) -> None:
        """The server does not read: hold our frames (the streams' queues pause their clients)."""
        self.write_blocked = True
        self.write_deadline.set(self.server.config.write_timeout)

    def resume_writing(self) -> None:
        self.write_blocked = False
        self.write_deadline.clear()
        self.flush()

    def flush(self) -> None:
        """Write what the session has framed (called after each batch of events or submits; a
        call from inside an event, through the client side, waits for the end of the read)."""
        if self.receiving or self.write_blocked or self.transport is None or self.transport.is_closing():
            return
        pieces = self.session.data_to_send()
        if pieces is not None:
            self.transport.writelines(pieces)
        if self.draining and not self.streams and self.session.want_close():
            self.close()

    # ------------------------------------------------------------ the pool
    def peer_closed(self) -> bool:
        """Taken from the idle stack: unusable if closing or told to go away (never closed here:
        other streams may still run on it)."""
        return self.draining or self.transport is None or self.transport.is_closing()

    def attach(self, exchange: Exchange) -> None:
        """Open a stream for `exchange`; stay in the idle stack while there is room for more."""
        server = self.server
        exchange.transition(PROXYING)
        stream = H2Stream(self, exchange)
        exchange.upstream = stream
        now = server.pool.loop.time()
        exchange.server = server
        exchange.leave_queue(now)
        exchange.connect_time = self.connect_time if not self.requests_served else 0.0
        client = exchange.client
        head = server.pool.request_head(exchange)
        if head is None:  # upstream_request_filter failed: nothing was sent, nor will be
            exchange.upstream = None
            client.fail(exchange, exchange.failure)
            self._offer()
            return
        method, path, authority, headers = h2_request(head)
        scheme = b"https" if server.tls is not None else b"http"
        ends = exchange.request_done and not exchange.body_buffer and not exchange.trailers
        try:
            stream.id = self.session.submit_request(method, scheme, authority or str(server.address).encode(),
                                                    path, headers, ends)
        except H2Error:  # no stream can open after all (a GOAWAY in this read)
            self.draining = True
            exchange.upstream = None
            exchange.transition(PENDING)
            server.pool.requeue(exchange)
            return
        self.streams[stream.id] = stream
        server.active += 1
        self.sent_at = now
        if exchange.body_buffer:
            for chunk in exchange.body_buffer:
                self.session.send_data(stream.id, chunk)
            stream.to_send -= sum(len(chunk) for chunk in exchange.body_buffer)
            if exchange.request_done:
                exchange.body_buffered = 0  # kept until the response arrives, for a replay
            else:
                exchange.body_streamed = True
                exchange.body_buffer = []
                exchange.body_buffered = 0
            client.resume_reading(PAUSE_BUFFER_FULL)
        if exchange.request_done:
            if not ends:
                self.session.end_stream(stream.id, exchange.trailers if exchange.chunked else None)
        else:
            client.send_continue(exchange)
        if client.write_paused:
            stream.reading_paused = True
        self.read_deadline.set(self.read_timeout)
        self.flush()
        self._offer()

    def _offer(self) -> None:
        """Back to the pool while there is room for another stream: it may take a queued one."""
        server = self.server
        if not self.draining and self.state is IDLE and self.session.can_open() and self not in server.idle:
            server.pool.on_idle(self)

    # ------------------------------------------------------- the binding's events
    def h2_informational(self, stream_id: int, status: int, headers: list) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.exchange is not None and stream.discard is None:
            exchange = stream.exchange
            exchange.client.informational(exchange, status, reason(status), headers)

    def h2_response(self, stream_id: int, status: int, headers: list, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.exchange is None:
            return
        exchange = stream.exchange
        server = self.server
        now = server.pool.loop.time()
        stream.head_done = True
        exchange.first_byte = now - self.sent_at
        exchange.status = status
        server.note_rtt(exchange.first_byte)
        if status >= 500 and server.config.fail_on_5xx:
            server.note_failure(now)
        self.resp_headers = headers
        stream.discard = self._consume_instead(exchange, status)
        if stream.discard is None:
            self._start_response(exchange, stream, status, headers, end_stream)
        if end_stream:
            # A head that ends the stream (a 204, a HEAD's answer, a gRPC trailers-only
            # response) gets no h2_end_stream of its own: the response is complete now.
            self.h2_end_stream(stream_id)

    def _start_response(self, exchange: Exchange, stream: H2Stream, status: int, headers: list,
                        end_stream: bool) -> None:
        """The response head to the client side, with its body mode."""
        via = None
        if any(name == b"via" for name, _ in headers):
            via = b", ".join(value for name, value in headers if name == b"via")
            headers = [(name, value) for name, value in headers if name != b"via"]
        if end_stream or exchange.is_head or status in (204, 304):
            stream.body_mode = BODY_NONE
        elif any(name == b"content-length" for name, _ in headers):
            stream.body_mode = BODY_LENGTH
        else:
            stream.body_mode = BODY_CHUNKED  # length unknown: ends with finish()
        policy = exchange.route.response_policy
        if policy is not None:
            headers = policy.apply(headers)
        exchange.client.start_response(exchange, status, reason(status), headers, "2", via, stream.body_mode)

    def h2_data(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.body_seen += len(data)
        if stream.exchange is None or stream.discard is not None:
            self.session.consume(stream_id, len(data))
            return
        stream.exchange.client.send_body(data)
        if stream.reading_paused:
            stream.held += len(data)  # the window stays shut until the client reads again
        else:
            self.session.consume(stream_id, len(data))
        if not self.touched or self.touched[-1] is not stream:
            self.touched.append(stream)

    def h2_trailers(self, stream_id: int, headers: list) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.trailers = headers

    def h2_end_stream(self, stream_id: int) -> None:
        """The response is complete (its stream closes next)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.exchange is None or not stream.head_done:
            return
        exchange = stream.exchange
        stream.exchange = None
        exchange.upstream_time = self.server.pool.loop.time() - self.sent_at
        self.requests_served += 1
        if not exchange.request_done:
            # Answered before the whole request body came: the rest is not sent (the client
            # side discards it), so our half of the stream is cancelled.
            self.session.reset(stream_id, CANCEL)
        if stream.discard is None:
            exchange.body_buffer = []
            exchange.client.finish(exchange, stream.trailers)
        elif stream.discard:
            self._internal_redirect(exchange, stream.discard)
        elif not self.server.pool.retry_failed(exchange, self.server):
            exchange.client.fail(exchange, errors.BadBackendResponse("retries exhausted"))

    def h2_stream_closed(self, stream_id: int, error_code: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.server.active -= 1
        if not self.streams:
            self.read_deadline.clear()
        exchange = stream.exchange
        if exchange is not None and not exchange.finished:
            if error_code == REFUSED_STREAM and not stream.head_done and self._retry_unprocessed(stream):
                pass
            elif exchange.upstream is stream:
                self._stream_failed(stream, errors.BadBackendResponse(
                    f"backend {self.server.address} reset the stream (HTTP/2 error {error_code})"))
        self._offer()

    def h2_goaway(self, last_stream_id: int, error_code: int) -> None:
        """No new stream here; those above last_stream_id are closed REFUSED_STREAM (retried)."""
        self.draining = True
        if self in self.server.idle:
            self.server.idle.remove(self)
        if error_code:
            log.warning("backend %s sent GOAWAY (HTTP/2 error %d)", self.server.address, error_code)

    def h2_writable(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.exchange is not None:
            stream.exchange.client.resume_reading(PAUSE_UPSTREAM_FULL)

    def h2_header_overflow(self, stream_id: int) -> None:
        self.session.reset(stream_id, CANCEL)  # h2_stream_closed answers 502

    # ---------------------------------------------------------------- failures
    def _retry_unprocessed(self, stream: H2Stream) -> bool:
        """The server did not process the stream: send the request again, on another connection."""
        exchange = stream.exchange
        if not exchange.body_held() or exchange.stale_retries >= MAX_UNPROCESSED_RETRIES:
            return False
        stream.exchange = None
        exchange.stale_retries += 1
        exchange.upstream = None
        log.info("backend %s did not process the request (GOAWAY or refused stream); sent again",
                 self.server.address, extra=about(exchange))
        exchange.transition(PENDING)
        self.server.pool.requeue(exchange)
        return True

    def _stream_failed(self, stream: H2Stream, failure: errors.ProxyFailure) -> None:
        exchange = stream.exchange
        stream.exchange = None
        exchange.upstream = None
        server = self.server
        log.warning("backend %s: %s", server.address, failure, extra=about(exchange))
        if not stream.head_done:
            server.note_failure(server.pool.loop.time())
            if stream.body_seen == 0 and server.pool.retry_failed(exchange, server):
                return
        exchange.client.fail(exchange, failure)

    def _on_read_timeout(self) -> None:
        self._time_out(f"no response data for {self.read_timeout}s")

    def _on_write_timeout(self) -> None:
        self._time_out("backend did not read the request")

    def _time_out(self, what: str) -> None:
        """The server stalled: its streams fail as timeouts (504, or retried as the HTTP/1 path
        does), not as the closed connection they would otherwise see; then the connection goes."""
        if not self.streams:
            return
        failure = errors.BackendTimeout(what)
        for stream in list(self.streams.values()):
            if stream.exchange is not None and not stream.exchange.finished:
                self._stream_failed(stream, failure)
        self.close()
