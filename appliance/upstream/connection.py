"""The backend side: one BackendConnection protocol per pooled TCP connection.

States follow RProxy: CONNECTING, IDLE (ready, still reading so a close by the
backend is seen at once), ACTIVE (serving one exchange) and DOWN (closed; the
server decides when to reconnect). Parser callbacks record facts; what they
imply (the body mode, reuse) is decided in `_on_head` and `_after_feed`,
outside the parser, so a released connection is never touched by a parser
still running over the same read. The response goes to the exchange's
downstream only through the Downstream interface (appliance/http/exchange.py),
as parsed facts and body bytes: the downstream frames them for its peer.
"""

from __future__ import annotations

import asyncio
import logging
import select
from enum import IntEnum
from typing import TYPE_CHECKING

import httptools

from appliance.deadline import Deadline
from appliance.http import errors
from appliance.http.exchange import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    PAUSE_BUFFER_FULL,
    PAUSE_UPSTREAM_FULL,
    PROXYING,
)
from appliance.http.headers import (
    RESP_CONNECTION,
    RESP_CONTENT_LENGTH,
    RESP_FORWARD,
    RESP_TRANSFER_ENCODING,
    RESP_UPGRADE,
    RESP_VIA,
    allowed_trailer,
    chunk_header,
    connection_options,
    last_chunk,
    remove_named,
    response_name_action,
    upgrade_protocols,
)
from appliance.observe.errorlog import about
from appliance.statemachine import Transitions
from appliance.upstream.head_reads import HeadReads
from appliance.upstream.splice import SPLICE_DONE, SPLICE_SOURCE_CLOSED, BodySplice, PipePool, SpliceHolder

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange
    from appliance.upstream.server_view import ServerView

log = logging.getLogger("rproxyd.backend")


class ConnState(IntEnum):  # IntEnum: hashed in C, for the transition checks
    CONNECTING = 1
    IDLE = 2
    ACTIVE = 3
    DOWN = 4
    TUNNELLED = 5  # a 101 handed the transport to a tunnel: out of the pool for good


# The states as module constants: a module global is one cached lookup, while every
# `ConnState.X` goes through EnumType's __getattr__ hook (interpreted or compiled).
CONNECTING, IDLE, ACTIVE, DOWN, TUNNELLED = ConnState

_MOVES = Transitions("backend connection", {
    CONNECTING: (IDLE, DOWN),
    IDLE: (ACTIVE, DOWN),
    ACTIVE: (IDLE, DOWN, TUNNELLED),
})

MAX_INTERNAL_REDIRECTS = 5
STATUS_LINE_11 = b"HTTP/1.1 "  # how an HTTP/1.1 response begins


class _UnsolicitedMessage(Exception):
    """Raised in a parser callback to stop llhttp at a message after the complete response."""


class BackendConnection(SpliceHolder):  # uvloop calls protocol methods by name: no asyncio.Protocol base
    __slots__ = (
        "body_mode",
        "body_seen",
        "bypass_remaining",
        "complete",
        "connect_time",
        "consume_statuses",
        "discard",
        "exchange",
        "extra_bytes",
        "head_bytes",
        "head_done",
        "head_reads",
        "informational",
        "line_11",
        "loop",
        "max_head_bytes",
        "parser",
        "parser_clean",
        "peer_watch",
        "read_deadline",
        "read_timeout",
        "reading_paused",
        "reads_capped",
        "requests_served",
        "resp_chunked",
        "resp_close",
        "resp_content_length",
        "resp_headers",
        "resp_hop_names",
        "resp_keep_alive",
        "resp_reason",
        "resp_upgrade",
        "resp_via",
        "sent_at",
        "server",
        "state",
        "trailers",
        "transport",
        "write_deadline",
    )

    def __init__(self, server: ServerView) -> None:
        self.server = server
        # Read on every response: copied from the server's settings as typed fields, not two
        # lookups through the untyped server and its configuration each time.
        self.read_timeout = server.config.read_timeout
        self.max_head_bytes = server.config.max_response_header_bytes
        pool = server.pool
        self.loop = pool.loop
        # The statuses _consume_instead looks at (retries, internal redirects): any other
        # response is delivered without that call.
        self.consume_statuses = pool.retry_statuses | {pool.redirect_status}
        self.state = CONNECTING
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser: httptools.HttpResponseParser | None = None
        # True when the last response ended inside the parser (not skipped past it), so the
        # same parser can read the next one.
        self.parser_clean = False
        self.requests_served = 0
        self.peer_watch: select.poll | None = None  # set once connected; see peer_closed
        self.connect_time = 0.0  # how long opening this connection took (set by the pool)
        self.reading_paused = False
        # Set while the transport's protocol is `head_reads` (see appliance/upstream/head_reads.py):
        # the last response was spliced, so reads are capped until one completes without.
        self.head_reads: HeadReads | None = None
        self.reads_capped = False
        self.sent_at = 0.0
        self.splice: BodySplice | None = None  # set while a response body goes through splice(2)
        # The Upgrade header of a response: set only by responses that carry one, so cleared by
        # attach() for a request that offers an upgrade, the only one whose 101 reads it.
        self.resp_upgrade: bytes | None = None
        loop = server.pool.loop
        self.read_deadline = Deadline(loop, self._on_read_timeout)
        self.write_deadline = Deadline(loop, self._on_write_timeout)
        self._reset_response()

    def _reset_response(self) -> None:
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.resp_reason = b""
        self.resp_content_length: int | None = None
        self.resp_chunked = False
        self.resp_close = False
        self.resp_keep_alive = False
        self.resp_via: bytes | None = None
        self.resp_hop_names: set[bytes] | None = None  # headers the Connection header named
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.head_done = False
        # Raw bytes read while the head is incomplete, or in a chunked body since the last
        # body bytes: what llhttp may hold as an unfinished head or trailer section.
        self.head_bytes = 0
        # Whether the response's status line says HTTP/1.1, as its first read shows (-1: no
        # read yet; 0: not that, or a 1xx came first). 1 spares _on_head llhttp's
        # get_http_version, which formats a new string (0.5 µs) for every response.
        self.line_11 = -1
        self.informational = False
        self.complete = False
        self.extra_bytes = False
        self.body_mode = BODY_NONE
        self.body_seen = 0
        self.bypass_remaining = 0
        # Set when the response is consumed here instead of sent on: a retry or an internal
        # redirect happens once it is complete. Holds the redirect target, or b"" for a retry.
        self.discard: bytes | None = None

    def _transition(self, new: ConnState) -> None:
        old = self.state
        self.state = _MOVES.check(old, new)
        # The server's in-flight count feeds least-conn balancing.
        if new is ACTIVE:
            self.server.active += 1
        elif old is ACTIVE:
            self.server.active -= 1

    # --------------------------------------------------------- asyncio hooks
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        limits = self.server.pool.limits
        transport.set_write_buffer_limits(limits.write_high_watermark, limits.write_low_watermark)
        # Registered once, polled at each reuse (peer_closed): one syscall, no registration.
        self.peer_watch = select.poll()
        fd = transport.get_extra_info("socket").fileno()
        self.peer_watch.register(fd, select.POLLIN | select.POLLRDHUP)

    def connected(self) -> None:
        """The pool's connect attempt finished: this connection is ready for requests."""
        if self.state is not CONNECTING:
            return  # closed again before the connect attempt returned
        self._transition(IDLE)
        self.server.on_connected(self)

    def connect_failed(self) -> None:
        """The pool's connect attempt failed: never connected, so no transport and no callbacks to come."""
        if self.state is CONNECTING:
            self._transition(DOWN)

    def data_received(self, data: bytes) -> None:
        if self.state is not ACTIVE:
            # Bytes nobody asked for: the connection's framing can't be trusted any more.
            log.warning("backend %s sent %d unsolicited bytes", self.server.address, len(data))
            self.close()
            return
        if self.bypass_remaining:
            self.read_deadline.set(self.read_timeout)
            self._forward_length_body(data)
            return
        self.head_bytes += len(data)
        if self.line_11 < 0:  # the response starts this read: nothing precedes it on the connection
            self.line_11 = data.startswith(STATUS_LINE_11)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            failure = exc.__context__
            if isinstance(failure, errors.ProxyFailure):
                self._fail(failure)
                return
            if not isinstance(failure, _UnsolicitedMessage):
                raise
            # The parser stopped at a message after the complete response (extra_bytes is
            # set): this response is delivered, then the connection closes.
        except httptools.HttpParserUpgrade as exc:
            # Only after a 101 _on_informational accepted: what follows is the new protocol's.
            self._switch(data[exc.args[0]:])
            return
        except httptools.HttpParserError as exc:
            if self.complete:
                self.extra_bytes = True  # garbage after a complete response
            else:
                self._fail(errors.BadBackendResponse(f"invalid response: {exc}"))
                return
        self._after_feed()

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost does the accounting

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_splice()
        previous = self._go_down()
        if previous is None:
            return
        exchange = self.exchange
        self.exchange = None
        self.server.on_closed(self, previous)
        if previous is ACTIVE and exchange is not None and not exchange.finished:
            self._lost_while_active(exchange, exc)

    def _go_down(self) -> object:
        """Stop the timers and move to DOWN: the state the connection left, None if already DOWN."""
        self.read_deadline.cancel()
        self.write_deadline.cancel()
        previous = self.state
        if previous is DOWN:
            return None
        self._transition(DOWN)
        return previous

    def pause_writing(self) -> None:
        self.write_deadline.set(self.server.config.write_timeout)
        exchange = self.exchange
        if exchange is not None:
            exchange.client.pause_reading(PAUSE_UPSTREAM_FULL)

    def resume_writing(self) -> None:
        self.write_deadline.clear()
        exchange = self.exchange
        if exchange is not None:
            exchange.client.resume_reading(PAUSE_UPSTREAM_FULL)

    # ---------------------------------------------------------- flow control
    def pause_reading(self) -> None:
        """The client is not keeping up: stop reading the response (and its timeout)."""
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
            self.read_deadline.clear()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
            if self.state is ACTIVE:
                self.read_deadline.set(self.read_timeout)

    # ---------------------------------------------------------- request side
    def peer_closed(self) -> bool:
        """Whether the backend closed this IDLE connection since the loop last read it; if so, close it.

        An IDLE connection has nothing to read: readable means a FIN (or bytes nobody asked
        for) that arrived after the loop's last poll. The common case is an origin that
        writes its last response and its FIN back to back: the response completes, the
        connection turns IDLE and would take the next request within the same read
        callback, before the loop sees the EOF. Checked before every reuse, nothing has been
        sent yet, so the request simply takes another connection, whatever its method
        (urllib3's is_connection_dropped makes the same check).
        """
        if not self.requests_served or not self.peer_watch.poll(0):
            # Never checked before its first request: a fresh connection cannot be stale, and a
            # TLS 1.3 backend's session tickets may still be unread in it (readable, not closed).
            return False
        self.close()  # connection_lost does the accounting; it is no server failure
        return True

    def attach(self, exchange: Exchange) -> None:
        """Start proxying `exchange` over this IDLE connection."""
        self._transition(ACTIVE)
        exchange.transition(PROXYING)
        self.exchange = exchange
        exchange.upstream = self
        self._reset_response()
        if exchange.upgrade is not None:
            self.resp_upgrade = None
        if not self.parser_clean:
            self.parser = httptools.HttpResponseParser(self)
        self.parser_clean = False
        now = self.loop.time()
        self.sent_at = now
        exchange.server = self.server
        exchange.leave_queue(now)
        exchange.connect_time = self.connect_time if not self.requests_served else 0.0
        transport = self.transport
        client = exchange.client
        head = self.server.pool.request_head(exchange)
        if head is None:  # upstream_request_filter failed: nothing was sent, nor will be
            self.abandon()
            client.fail(exchange, exchange.failure)
            return
        if not exchange.body_buffer:
            transport.write(head)
        else:
            transport.writelines([head, *self._framed_buffer(exchange)])
            if exchange.request_done:
                # Kept until the response arrives, so the request can be replayed.
                exchange.body_buffered = 0
            else:
                exchange.body_streamed = True
                exchange.body_buffer = []
                exchange.body_buffered = 0
            client.resume_reading(PAUSE_BUFFER_FULL)
        if exchange.request_done:
            if exchange.chunked:
                transport.write(last_chunk(exchange.trailers))
        else:
            client.send_continue(exchange)
        if client.write_paused:
            self.pause_reading()
        else:
            self.read_deadline.set(self.read_timeout)

    @staticmethod
    def _framed_buffer(exchange: Exchange) -> list[bytes]:
        if not exchange.chunked:
            return exchange.body_buffer
        framed: list[bytes] = []
        for chunk in exchange.body_buffer:
            framed += (chunk_header(len(chunk)), chunk, b"\r\n")
        return framed

    def send_request_bytes(self, data: bytes) -> None:
        self.transport.write(data)

    def send_request_chunk(self, data: bytes) -> None:
        self.transport.writelines((chunk_header(len(data)), data, b"\r\n"))

    def request_splice_target(self, remaining: int) -> tuple[PipePool, asyncio.Transport] | None:
        """Pipes and transport for splicing `remaining` request-body bytes here; None: copy them."""
        pipes = self.server.pool.pipes
        if (pipes is None or remaining < pipes.min_bytes or self.server.tls is not None
                or self.transport.get_write_buffer_size()):
            return None
        return pipes, self.transport

    def request_splice_waiting(self, waiting: bool) -> None:
        """A request-body splice waits for this socket to take bytes (the write timeout runs), or not."""
        if waiting:
            self.write_deadline.set(self.server.config.write_timeout)
        else:
            self.write_deadline.clear()

    def abandon(self) -> None:
        """The exchange ended on the client side mid-flight: this connection can't be reused."""
        self.exchange = None
        self.close()

    def close(self) -> None:
        # The splice holds duplicates of both sockets: release them now, or the client's
        # socket would stay open behind its closed transport.
        self.stop_splice()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    # -------------------------------------------------------- parser callbacks
    def on_status(self, reason: bytes) -> None:
        self.resp_reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            if allowed_trailer(name):
                if self.trailers is None:
                    self.trailers = []
                self.trailers.append((name, value))
            return
        action = response_name_action(name)
        if action == RESP_FORWARD:
            self.resp_headers.append((name, value))
        elif action == RESP_CONTENT_LENGTH:
            self.resp_content_length = int(value)
            self.resp_headers.append((name, value))
        elif action == RESP_CONNECTION:
            close, keep_alive, named = connection_options(value)
            self.resp_close = self.resp_close or close
            self.resp_keep_alive = self.resp_keep_alive or keep_alive
            if named is not None:
                # Headers named by Connection are hop-by-hop too, wherever they stand in the
                # head; removed once it is complete.
                self.resp_hop_names = named if self.resp_hop_names is None else self.resp_hop_names | named
        elif action == RESP_VIA:
            self.resp_via = value if self.resp_via is None else self.resp_via + b", " + value
        elif action == RESP_UPGRADE:
            self.resp_upgrade = value
        elif action == RESP_TRANSFER_ENCODING:
            # Hop-by-hop: the body is re-framed for the client, so only plain "chunked" can
            # be passed on. Another coding (gzip, chunked twice) would reach the client
            # undecoded under a false framing: refused with 502, as nginx does.
            if self.resp_chunked or value.strip().lower() != b"chunked":
                raise errors.BadBackendResponse(
                    f"unsupported Transfer-Encoding {value.decode('latin-1')!r}")
            self.resp_chunked = True
        # RESP_DROP: other hop-by-hop headers.

    def on_headers_complete(self) -> None:
        if self.resp_hop_names is not None:
            self.resp_headers = remove_named(self.resp_headers, self.resp_hop_names)
            self.resp_hop_names = None
        status = self.parser.get_status_code()
        if status < 200:
            self._on_informational(status)
            return
        self.head_done = True
        self._on_head(status)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.extra_bytes = True
            return
        self.head_bytes = 0
        self.body_seen += len(body)
        if self.discard is None:
            client = self.exchange.client
            client.send_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        # HEAD responses end at their head, which llhttp does not know: its state is stale.
        self.parser_clean = not self.exchange.is_head and not self.extra_bytes
        self.complete = True

    def on_message_begin(self) -> None:
        if self.complete:
            # A second response in the same read, with no request for it: stop llhttp here,
            # before its callbacks could send the client a head it never asked for.
            self.extra_bytes = True
            raise _UnsolicitedMessage

    # ------------------------------------------------------- response side
    def _on_informational(self, status: int) -> None:
        exchange = self.exchange
        if status == 101:
            self._check_switch(exchange)
            return
        self.informational = True
        self.line_11 = 0  # the final response's version is llhttp's to tell
        exchange.client.informational(exchange, status, self.resp_reason, self.resp_headers)
        self.resp_headers = []
        self.resp_reason = b""
        self.resp_content_length = None

    def _check_switch(self, exchange: Exchange) -> None:
        """A 101: accepted only as the answer to the upgrade offered, to one protocol offered.

        Raised otherwise (502): a 101 nobody asked for, or to another protocol, would turn the
        connection into something neither side agreed to.
        """
        if exchange.upgrade is None:
            raise errors.BadBackendResponse("101 Switching Protocols without an Upgrade request")
        chosen = upgrade_protocols(self.resp_upgrade or b"")
        if (len(chosen) != 1 or chosen[0] not in upgrade_protocols(exchange.upgrade)
                or not self.parser.should_upgrade()):
            raise errors.BadBackendResponse("101 Switching Protocols to a protocol that was not offered")
        self.head_done = True

    def _switch(self, rest: bytes) -> None:
        """The 101 is complete: leave the pool for good and hand the transport to the client side."""
        exchange = self.exchange
        server = self.server
        exchange.first_byte = server.pool.loop.time() - self.sent_at
        exchange.status = 101
        exchange.upstream = None
        self.exchange = None
        self.parser = None
        self.read_deadline.release()
        self.write_deadline.release()
        self._transition(TUNNELLED)
        server.on_closed(self, ACTIVE)  # its slot reopens on demand, as after a close
        policy = exchange.route.response_policy
        headers = self.resp_headers if policy is None else policy.apply(self.resp_headers)
        pipes = server.pool.pipes if server.tls is None else None  # TLS needs user-space bytes
        exchange.client.switch_protocols(exchange, self.resp_reason, headers, self.resp_via,
                                         self.resp_upgrade, self.transport, rest, pipes)

    def _on_head(self, status: int) -> None:
        """Decide the body mode and reuse, and hand the response head to the downstream."""
        exchange = self.exchange
        parser = self.parser
        server = self.server
        loop = self.loop
        exchange.first_byte = loop.time() - self.sent_at
        exchange.status = status
        server.note_rtt(exchange.first_byte)
        if status >= 500 and server.config.fail_on_5xx:
            server.note_failure(loop.time())
        self.discard = self._consume_instead(exchange, status) if status in self.consume_statuses else None
        version = "1.1" if self.line_11 == 1 else parser.get_http_version()
        if version == "1.1":
            self.resp_keep_alive = not self.resp_close
        else:
            self.resp_keep_alive = self.resp_keep_alive and not self.resp_close
        if exchange.is_head or status == 204 or status == 304:
            self.body_mode = BODY_NONE
            self.complete = True
        elif self.resp_chunked:
            self.body_mode = BODY_CHUNKED
        elif self.resp_content_length is not None:
            self.body_mode = BODY_LENGTH
            if self.resp_content_length == 0:
                self.complete = True
        else:
            self.body_mode = BODY_UNTIL_CLOSE
            self.resp_keep_alive = False
        if self.discard is not None:
            return
        # The route's header policy is the built-in response filter.
        policy = exchange.route.response_policy
        headers = self.resp_headers if policy is None else policy.apply(self.resp_headers)
        client = exchange.client
        client.start_response(exchange, status, self.resp_reason, headers, version, self.resp_via,
                              self.body_mode)

    def _consume_instead(self, exchange: Exchange, status: int) -> bytes | None:
        """Whether this response asks for a retry or an internal redirect instead of delivery."""
        pool = self.server.pool
        if status == pool.redirect_status:
            target = next((v for n, v in self.resp_headers if n.lower() == b"x-internal-redirect"), None)
            if target is not None:
                return target
        # Only when another server can take the retry: else this answer is the best there is.
        if status in pool.retry_statuses and pool.can_retry(exchange, self.server):
            return b""
        return None

    def _after_feed(self) -> None:
        """Act on what the parser recorded during one read."""
        if self.state is not ACTIVE:
            return
        if not self.complete and self.head_bytes > self.max_head_bytes:
            # llhttp would keep an unfinished head or trailer section in memory without bound.
            self._fail(errors.BadBackendResponse("response head or trailers too large"))
            return
        if self.complete:
            self._complete_response()
            return
        # More of the response is to come. Pushed forward here, not before the read was parsed:
        # most responses complete in the read that starts them, and then there is nothing to
        # push (the deadline set when the request was sent is cleared). A client that is not
        # keeping up paused our reads and, with them, the deadline.
        if not self.reading_paused:
            self.read_deadline.set(self.read_timeout)
        if self.head_done:
            client = self.exchange.client
            client.flush()
            if self.body_mode == BODY_LENGTH:
                self.bypass_remaining = self.resp_content_length - self.body_seen
                self._try_splice()

    def _forward_length_body(self, data: bytes) -> None:
        remaining = self.bypass_remaining
        if len(data) > remaining:
            self.extra_bytes = True
            data = data[:remaining]
        self.bypass_remaining = remaining - len(data)
        if self.discard is None:
            client = self.exchange.client
            client.send_body(data)
        if not self.bypass_remaining:
            self.complete = True
            self._complete_response()
        else:
            self._try_splice()

    # ------------------------------------------------------- zero-copy body
    def _try_splice(self) -> None:
        """Hand the rest of a large plaintext body to splice(2), if nothing is queued before it."""
        pipes = self.server.pool.pipes
        if pipes is None or self.bypass_remaining < pipes.min_bytes or self.discard is not None:
            return
        if self.server.tls is not None:
            return  # TLS needs user-space bytes
        destination = self.exchange.client.response_splice_target()
        if destination is None:
            return
        self.transport.pause_reading()  # resumed when the splice ends
        self.splice = BodySplice(self.server.pool.loop, pipes, self.transport, destination,
                                 self.bypass_remaining, self)

    def splice_read(self, size: int) -> None:
        """The splice took `size` body bytes from the backend."""
        self.body_seen += size
        self.read_deadline.set(self.read_timeout)

    def splice_written(self, size: int) -> None:
        """The splice gave `size` body bytes to the client."""
        self.exchange.client.response_spliced(size)

    def splice_waiting(self, for_destination: bool) -> None:
        """Whose timeout applies: the client's send timeout while it does not read, else ours."""
        self.exchange.client.response_splice_blocked(for_destination)
        if for_destination:
            self.read_deadline.clear()
        else:
            self.read_deadline.set(self.read_timeout)

    def splice_ended(self, outcome: int) -> None:
        self.splice = None
        exchange = self.exchange
        exchange.client.response_splice_blocked(False)
        if outcome == SPLICE_DONE:
            self.bypass_remaining = 0  # the splice counted the rest of the body itself
            if not self.reads_capped:
                self._cap_reads()
            self.transport.resume_reading()
            self.complete = True
            self._complete_response()
        elif outcome == SPLICE_SOURCE_CLOSED:
            self.close()  # connection_lost cuts the client's response, as on any mid-body loss
        else:
            exchange.client.close(force=True)  # the client is gone; its close abandons us

    def _cap_reads(self) -> None:
        """The next response is likely spliced too: read its head 16 KiB at a time (transport paused)."""
        if self.head_reads is None:
            self.head_reads = HeadReads(self)
        self.reads_capped = True
        self.transport.set_protocol(self.head_reads)  # uvloop picks the read path at resume

    def uncap_reads(self) -> None:
        """A response completed without a splice (HeadReads saw it): back to uvloop's plain 256 KiB reads."""
        self.reads_capped = False
        self.transport.set_protocol(self)  # a reading uvloop transport restarts its reads on the new path

    def _complete_response(self) -> None:
        exchange = self.exchange
        reusable = self.resp_keep_alive and not self.extra_bytes and exchange.request_done
        exchange.upstream_time = self.loop.time() - self.sent_at
        self.exchange = None
        self.read_deadline.clear()
        self.requests_served += 1
        if self.reading_paused:
            self.resume_reading()
        # Releasing may attach the next request at once, which resets the response facts:
        # keep what the finished exchange still needs.
        trailers, discard = self.trailers, self.discard
        # Release first, so a pipelined follow-up request can reuse this warm connection.
        if reusable:
            self._transition(IDLE)
            self.server.release(self)
        else:
            self.close()
        if discard is None:
            if exchange.body_buffer:
                exchange.body_buffer = []  # answered: the body kept for a replay is not needed now
            client = exchange.client
            client.finish(exchange, trailers)
        elif discard:
            self._internal_redirect(exchange, discard)  # a GET without the body (Exchange.drop_body)
        elif not self.server.pool.retry_failed(exchange, self.server):
            exchange.client.fail(exchange, errors.BadBackendResponse("retries exhausted"))

    def _internal_redirect(self, exchange: Exchange, target: bytes) -> None:
        path = target.partition(b"?")[0]
        if not path.startswith(b"/") or not exchange.route.redirect_allowed(path):
            reason = f"internal redirect to {target.decode('latin-1')!r} is not allowed"
            exchange.client.fail(exchange, errors.BadBackendResponse(reason))
        elif exchange.redirects >= MAX_INTERNAL_REDIRECTS:
            exchange.client.fail(exchange, errors.BadBackendResponse("internal redirect refused"))
        else:
            exchange.client.redirect(exchange, target)

    # ---------------------------------------------------------------- failures
    def _lost_while_active(self, exchange: Exchange, exc: Exception | None) -> None:
        if self.head_done and self.body_mode == BODY_UNTIL_CLOSE and exc is None:
            self.complete = True
            exchange.client.finish(exchange, None)
            return
        exchange.upstream = None
        unanswered = not self.head_done and not self.informational and self.body_seen == 0
        server = self.server
        pool = server.pool
        if unanswered and self.requests_served:
            # A reused connection the backend closed as the request went out (a keep-alive
            # timeout or a per-connection request limit): stale, not a server failure, so
            # it never counts toward passive health (nor does HAProxy count it).
            if pool.retry_stale(exchange):
                log.info("backend %s closed a reused connection; request sent again", server.address,
                         extra=about(exchange))
                return
            reason = f"backend {server.address} closed a reused connection before answering"
        else:
            server.note_failure(pool.loop.time())
            if unanswered and pool.retry_failed(exchange, server):
                return
            reason = f"backend {server.address} closed the connection"
        exchange.client.fail(exchange, errors.BackendRefused(reason))

    def _fail(self, failure: errors.ProxyFailure) -> None:
        exchange = self.exchange
        log.warning("backend %s: %s", self.server.address, failure,
                    extra=about(exchange) if exchange is not None else None)
        answered = self.head_done
        self.exchange = None
        self.close()
        server = self.server
        server.note_failure(server.pool.loop.time())
        if exchange is not None:
            exchange.upstream = None
            if not answered and server.pool.retry_failed(exchange, server):
                return
            exchange.client.fail(exchange, failure)

    def _on_read_timeout(self) -> None:
        if self.state is ACTIVE:
            self._fail(errors.BackendTimeout(f"no response data for {self.read_timeout}s"))

    def _on_write_timeout(self) -> None:
        if self.state is ACTIVE:
            self._fail(errors.BackendTimeout("backend did not read the request"))


