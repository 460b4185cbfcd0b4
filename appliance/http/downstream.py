"""The client side: one ClientConnection protocol per accepted connection.

httptools callbacks record facts into the Exchange being parsed; decisions are
taken in `on_headers_complete` (validation, framing, keep-alive) and in the
methods of the Downstream interface the backend side calls
(appliance/http/exchange.py: `start_response`, `send_body`, `finish`,
`fail`, ...), which frame the response for this client. Pipelined requests are
answered in order: the exchange at the head of `self.exchanges` owns the
response stream, later ones wait (their bodies buffered, bounded by pausing reads).
"""

from __future__ import annotations

import asyncio
import logging
from enum import IntEnum
from functools import partial
from typing import TYPE_CHECKING

import httptools

from appliance.deadline import Deadline
from appliance.http import errors
from appliance.http.cork import set_cork
from appliance.http.downstream_base import DownstreamBase
from appliance.http.exchange import (
    BODY_LENGTH,
    BODY_NONE,
    FINISHED,
    HEAD,
    PAUSE_BUFFER_FULL,
    WAITING_TURN,
    Exchange,
    Fields,
)
from appliance.http.h2_downstream import PREFACE_LINE, H2Connection
from appliance.http.headers import (
    REQ_CONNECTION,
    REQ_CONTENT_LENGTH,
    REQ_EXPECT,
    REQ_FORWARD,
    REQ_FORWARDED_FOR,
    REQ_HOST,
    REQ_REAL_IP,
    REQ_REQUEST_ID,
    REQ_TRANSFER_ENCODING,
    REQ_UPGRADE,
    REQ_VIA,
    REQUEST_NAME_ACTIONS,
    STATUS_LINE_STARTS,
    allowed_request_trailer,
    chunk_header,
    connection_options,
    last_chunk,
    remove_named,
    request_action,
    serialize_fields,
)
from appliance.http.idle import IdleClient
from appliance.http.target import HASH, valid_host
from appliance.http.tunnel import Tunnel
from appliance.observe import metrics
from appliance.observe.errorlog import about
from appliance.phases import Response, calls
from appliance.statemachine import Transitions
from appliance.timerwheel import UNFILED
from appliance.tls.session import TlsConnection
from appliance.upstream.head_reads import HeadReads
from appliance.upstream.splice import SPLICE_DONE, SPLICE_SOURCE_CLOSED, BodySplice, PipePool

if TYPE_CHECKING:
    from appliance.config.schema import Http2Config
    from appliance.context import WorkerContext
    from appliance.tls.contexts import TlsSite

# Reasons reading from the client is paused; reading resumes when none is left. The
# backend side's own (PAUSE_UPSTREAM_FULL = 1, PAUSE_BUFFER_FULL = 4) are in exchange.py.
PAUSE_PIPELINE_FULL = 2  # too many pipelined requests queued
PAUSE_SPLICE = 8  # the rest of the request body goes through splice(2), not this transport
# An upgrade request waits for its answer: what follows its head is held, never sent to the
# backend; after a 101 it starts the tunnel, after any other answer it is the next request.
PAUSE_UPGRADE = 16

log = logging.getLogger("rproxyd.client")

# How long a closed client connection keeps reading (and dropping) input after our FIN.
LINGER_SECONDS = 2.0
REQUEST_LINE_11 = b" HTTP/1.1\r\n"  # how an HTTP/1.1 request line ends
LINE_11_TAIL = len(REQUEST_LINE_11) - 1  # how far before the line's \n it starts


class ClientState(IntEnum):  # IntEnum: hashed in C, for the transition checks
    IDLE = 1  # no request in progress; keep-alive timer armed
    BUSY = 2  # at least one exchange in progress
    CLOSING = 3  # no further requests; close once the current ones finish
    CLOSED = 4
    TUNNELLED = 5  # a 101 handed the transport to a Tunnel (appliance/http/tunnel.py) until it closes


# The states as module constants: a module global is one cached lookup, while every
# `ClientState.X` goes through EnumType's __getattr__ hook (interpreted or compiled).
IDLE, BUSY, CLOSING, CLOSED, TUNNELLED = ClientState

_CLIENT_MOVES = Transitions("client", {
    IDLE: (BUSY, CLOSING, CLOSED),
    BUSY: (IDLE, CLOSING, CLOSED, TUNNELLED),
    # CLOSING: the worker began to drain after the upgrade went to the backend.
    CLOSING: (CLOSED, TUNNELLED),
    TUNNELLED: (CLOSED,),
})

# Body framing of the response as sent to the client.
FRAME_NONE = 0  # no body (HEAD, 1xx, 204, 304)
FRAME_RAW = 1  # body bytes as they come (Content-Length, or close-delimited to HTTP/1.0)
FRAME_CHUNKED = 2  # re-chunked for an HTTP/1.1 client


def _note_connection_header(exchange: Exchange, value: bytes) -> None:
    """Record what a request's Connection header says (ClientConnection.on_header)."""
    close, keep_alive, named = connection_options(value)
    exchange.conn_close = exchange.conn_close or close
    exchange.conn_keep_alive = exchange.conn_keep_alive or keep_alive
    if named is not None:
        # Headers named by Connection are hop-by-hop too; removed once the head is complete.
        exchange.hop_names = named if exchange.hop_names is None else exchange.hop_names | named


class ClientListener:
    """What every client connection of one listener shares, made once per listener and worker."""

    __slots__ = ("ctx", "h2", "proto", "site")

    def __init__(self, ctx: WorkerContext, proto: bytes = b"http", site: TlsSite | None = None,
                 h2: Http2Config | None = None) -> None:
        self.ctx = ctx
        self.proto = proto  # b"http" or b"https", for X-Forwarded-Proto
        self.site = site  # a TLS listener's fallback site (None: plain HTTP)
        # The [http2] settings when a connection may turn out to speak HTTP/2 (ALPN chose h2,
        # or a plaintext h2c listener got the preface): it then hands its transport to an
        # H2Connection (appliance/http/h2_downstream.py). None: HTTP/1.x only.
        self.h2 = h2
        if ctx.compact_after < ctx.keepalive_timeout:
            ctx.idle.sweep_every(ctx.compact_after, partial(compact_idle, ctx))

    def wake(self, idle: IdleClient) -> ClientConnection:
        """A compacted idle connection (appliance/http/idle.py) is a ClientConnection again, with
        what it kept across requests, its transport handed back (a detached plain connection's
        is a new one, made by uvloop from its socket); idle again, it compacts again."""
        client = ClientConnection(self)
        ctx = self.ctx
        transport = client.transport = idle.transport
        client.peer_ip, client.trusted, client.forwarded_tail = idle.facts
        client.peer_port = idle.port
        tls = idle.tls
        if tls is not None:
            client.tls = tls
            client.forwarded_tail += tls.lines
        transport.set_protocol(client)
        ctx.clients.add(client)
        # What the client sends next is a request head (a woken connection reads it at once).
        ctx.wheel.set(client, ctx.header_timeout)
        return client


class ClientConnection(DownstreamBase):  # uvloop calls protocol methods by name: no asyncio.Protocol base
    __slots__ = (
        "_read_pauses",
        "answer_keep_alive",
        "bypass_remaining",
        "client_done",
        "compact_due",
        "corked",
        "exchanges",
        "head_raw",
        "held_head",
        "line_11",
        "listener",
        "parser",
        "parsing",
        "reads_capped",
        "requests_served",
        "response_framing",
        "send_deadline",
        "slot",
        "state",
        "transport",
        "upgrade_held",
        "when",
    )

    def __init__(self, listener: ClientListener, peer: tuple[str, int] | None = None) -> None:
        ctx = listener.ctx
        DownstreamBase.__init__(self, ctx, listener.site)
        self.listener = listener
        self.state = IDLE
        self.transport: asyncio.Transport | None = None
        # Made when request bytes arrive; from the connection's second request on, kept while
        # the connection is whole (see _finish): llhttp starts over by itself after each
        # message, so a busy keep-alive client's request costs no new parser (making and
        # freeing one is 2% of a keep-alive request). A parser (with the bound methods it
        # keeps) is 900 bytes: a connection idle long enough to be compacted (_compact) lets
        # it go with the rest of the ClientConnection.
        self.parser: httptools.HttpRequestParser | None = None
        # A list, not a deque: an empty deque costs 760 bytes, a list 56, and with 10k idle
        # keep-alive connections that is most of the difference; the queue is short
        # (max_pipelined), so pop(0) stays cheap. None while the connection is idle (or
        # closed): made by a request's first bytes, dropped when the connection goes idle,
        # as the parser is (an empty list is 56 bytes, about as dear as making one).
        self.exchanges: list[Exchange] | None = None
        self.parsing: Exchange | None = None
        self.bypass_remaining = 0
        # Raw bytes received since the current request head began, or in a chunked body since
        # the last body bytes: what llhttp may be holding as an unfinished head, chunk line
        # or trailer section (bounded by max_header_bytes).
        self.head_raw = 0
        self.line_11 = False  # set per parser (data_received), read once (on_headers_complete)
        self.response_framing = FRAME_RAW
        self.answer_keep_alive = False  # whether the connection survives the response going out
        # A response head waiting to go out with the first body bytes: one send, not two.
        self.held_head: bytes | None = None
        # The client sends nothing more, so closing needs no lingering close: it sent FIN, or
        # its last request said it would close (see _finish).
        self.client_done = False
        # TCP_CORK is set on the socket: a response the connection closes after is being
        # written (see _cork_last_response).
        self.corked = False
        self._read_pauses = 0
        if peer is not None:
            # The client address a PROXY header sent (appliance/http/proxy_accept.py): the
            # client is that address everywhere, the balancer's own is forgotten.
            self.peer_port = peer[1]
            self.peer_ip, self.trusted, self.forwarded_tail = ctx.peers.facts(peer[0], listener.proto)
        # The read deadline (header, body, keep-alive and lingering-close timeouts): the
        # connection is itself its entry in the worker's timer wheel (ctx.wheel.set, `on_expiry`),
        # not a Deadline object with a bound method, 144 bytes less per idle connection.
        self.when: float | None = None  # loop time the read deadline passes; None: not set
        self.slot = UNFILED  # its wheel slot (the wheel's to set)
        # Set when a response leaves the connection idle: its read deadline is then the
        # keep-alive deadline, from which the compaction sweep (compact_idle) tells how long it
        # has been idle; a new connection's header timeout is not. Also how _finish tells a
        # connection's first idle spell.
        self.compact_due = False
        # Made the first time the client stops reading our output (most connections never do).
        self.send_deadline: Deadline | None = None
        # What the client sent after an upgrade request's head, held while it waits (PAUSE_UPGRADE).
        self.upgrade_held: bytes | None = None
        # Requests read to their end. After a spliced request body the transport reads through
        # a HeadReads (appliance/upstream/head_reads.py), 16 KiB at a time, until a request
        # ends within such a read: an uploading client's next head then brings at most 16 KiB
        # of body into the worker, not 256 KiB, before the splice takes the rest.
        self.requests_served = 0
        self.reads_capped = False

    # ----------------------------------------------------------------- state
    def _transition(self, new: ClientState) -> None:
        self.state = _CLIENT_MOVES.check(self.state, new)

    # --------------------------------------------------------- asyncio hooks
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        limits = self.ctx.limits
        transport.set_write_buffer_limits(limits.write_high_watermark, limits.write_low_watermark)
        # Taken now, once: uvloop's TLS transport stops reporting its peer once the connection
        # ends, and the access log formats its batch later (appliance/observe/accesslog.py).
        if not self.peer_ip:  # else a PROXY header named the client (see __init__)
            peer = transport.get_extra_info("peername")
            proto = self.listener.proto
            if peer:
                self.peer_port = peer[1]
                self.peer_ip, self.trusted, self.forwarded_tail = self.ctx.peers.facts(peer[0], proto)
            else:
                self.peer_ip, self.trusted, self.forwarded_tail = self.ctx.peers.facts("", proto)
        if self.tls is not None:
            self.tls = TlsConnection(transport, self.tls)
            # The X-SSL-* lines ride on the per-connection tail every request head ends with.
            self.forwarded_tail += self.tls.lines
            self.ctx.observer.tls_handshake(self.tls.resumed)
            # uvloop runs connection_made once the handshake is done: ALPN has chosen.
            h2 = self.listener.h2
            if h2 is not None and transport.get_extra_info("ssl_object").selected_alpn_protocol() == "h2":
                H2Connection.take_over(self, h2, transport, b"")
                return
        self.ctx.clients.add(self)
        # A new connection gets the header timeout for its first request.
        self.ctx.wheel.set(self, limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_splice()
        if self.state is not CLOSED:
            self._transition(CLOSED)
        self.ctx.wheel.cancel(self)  # so that the wheel no longer refers to this connection
        if self.send_deadline is not None:
            self.send_deadline.release()
        self.ctx.clients.discard(self)
        if self.exchanges:
            for exchange in self.exchanges:
                self._abandon(exchange)
        self.exchanges = None
        self.parsing = None
        # The parser's bound methods refer back to this connection: dropping it here lets
        # reference counting free the connection, not the cyclic GC.
        self.parser = None

    def data_received(self, data: bytes) -> None:
        if self.state is CLOSED:
            return
        if self.bypass_remaining:
            data = self._forward_length_body(data)
            if not data:
                return
        self.head_raw += len(data)
        parser = self.parser
        if parser is None or self.exchanges is None:
            if parser is None:
                parser = self.parser = httptools.HttpRequestParser(self)
            # A fresh parser's first request starts this read, and so does the next request
            # of an idle connection (nothing is queued: llhttp holds no part of a request), so
            # the read's first line is its request line. If that ends in REQUEST_LINE_11,
            # llhttp either parses version 1.1 or refuses the line, and on_headers_complete
            # need not ask it: get_http_version formats a new string (0.5 µs) per request.
            start = data.find(b"\n") - LINE_11_TAIL
            self.line_11 = start > 0 and data.startswith(REQUEST_LINE_11, start)
        # The parser callbacks only record facts and validate; what follows from them (routing,
        # the backend) is decided here, once feed_data has returned.
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            failure = exc.__context__
            if not isinstance(failure, errors.ProxyFailure):
                raise
            self._reject(failure)
            self._start_ready()
            return
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops after a request asking to upgrade: what follows belongs to the new
            # protocol if the backend switches, else it is the next request. Either way it waits,
            # unread by anyone, for the answer (_read_held, switch_protocols).
            self.upgrade_held = data[exc.args[0]:]
            self.pause_reading(PAUSE_UPGRADE)
            self._start_ready()
            return
        except httptools.HttpParserError as exc:
            if (self.listener.h2 is not None and data.startswith(PREFACE_LINE) and self.head_raw == len(data)
                    and len(self.exchanges) == 1):  # the preface opens this read and nothing waits
                self._become_h2(data)
                return
            if self.parsing is None and self.exchanges and self.exchanges[-1].keep_alive is False:
                # llhttp refuses any byte after a request that announced it was the last
                # (Connection: close, HTTP/1.0 without keep-alive). RFC 9112 9.6: such a client
                # sends nothing more, so what it sent anyway is dropped, as nginx and HAProxy
                # do: the requests before it are still answered, then the connection closes
                # with a lingering close (it is CLOSING), which drops whatever else comes.
                self._stop_reading_requests()
                self._start_ready()
                return
            self._reject(errors.ClientFault(str(exc)))
            self._start_ready()
            return
        self._start_ready()
        exchange = self.parsing
        if exchange is None or self.state is CLOSED:
            return
        if exchange.state is HEAD:
            # llhttp keeps an unfinished head in memory without bound: cap it here.
            if self.head_raw > self.ctx.limits.max_header_bytes:
                self._reject(errors.HeadTooLarge("request head too large"))
            elif self.when is None:
                # The head began in this read (on_message_begin, or the request before it ended,
                # cleared the deadline): it must be whole within the header timeout, however
                # slowly the rest arrives. A pipelined head after a finished request gets it too.
                self.ctx.wheel.set(self, self.ctx.header_timeout)
            return
        if (exchange.chunked and not exchange.request_done
                and self.head_raw > self.ctx.limits.max_header_bytes):
            # The same for the trailer section (and chunk lines) of a chunked body.
            self._reject(errors.HeadTooLarge("request trailers too large"))
            return
        self.ctx.wheel.set(self, self.ctx.limits.body_timeout)
        if exchange.content_length and not exchange.request_done:
            # The rest of a Content-Length body skips the parser (see _forward_length_body).
            self.bypass_remaining = exchange.content_length - exchange.body_received
            self._try_splice(exchange)

    def eof_received(self) -> bool | None:
        if self.state is CLOSED:
            return False  # the client finished its side of a lingering close
        self.client_done = True
        exchange = self.parsing
        if exchange is not None and not exchange.request_done:
            if exchange.state is HEAD:
                # The stream ended inside a request head: that request can never be whole.
                # Drop it unanswered, as nginx does, instead of waiting out header_timeout;
                # the requests before it are still answered.
                self._abandon(exchange)
                self.exchanges.remove(exchange)
                self.parsing = None
            else:
                # The body was cut short: the backend must not take it as complete.
                self._fail_current(exchange, errors.ClientFault("request body truncated"))
        # Half-close: answer what was asked, then close (transport closes on return False
        # only once our writes are done, because we call close() ourselves).
        if not self.exchanges:
            self.close()
        else:
            self._stop_reading_requests()
        # TLS has no half-close: the SSL transport closes whatever we return (and warns on True).
        return self.tls is None

    def pause_writing(self) -> None:
        self.write_paused = True
        self._arm_send_deadline()
        if self.exchanges:
            upstream = self.exchanges[0].upstream
            if upstream is not None:
                upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.send_deadline is not None:
            self.send_deadline.clear()
        if self.exchanges:
            upstream = self.exchanges[0].upstream
            if upstream is not None:
                upstream.resume_reading()

    def _become_h2(self, data: bytes) -> None:
        """A plaintext h2c listener got the HTTP/2 preface (prior knowledge): this connection
        speaks HTTP/2 from its first byte, so an H2Connection takes the transport over."""
        self.exchanges = None
        self.parsing = None
        self.parser = None
        self.ctx.wheel.cancel(self)
        self.ctx.clients.discard(self)
        self._transition(CLOSED)
        H2Connection.take_over(self, self.listener.h2, self.transport, data)

    # ----------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        exchange = Exchange(self)
        exchange.started = self.ctx.loop.time()
        self.parsing = exchange
        if self.exchanges is None:
            self.exchanges = [exchange]
        else:
            self.exchanges.append(exchange)
        if self.state is IDLE:
            self._transition(BUSY)
            # The keep-alive deadline no longer applies. The header timeout is set only if the
            # head is still unfinished when this read is parsed (data_received), as nginx arms
            # client_header_timeout only for a head that needs another read.
            self.when = None
        if len(self.exchanges) > self.ctx.max_pipelined:
            self.pause_reading(PAUSE_PIPELINE_FULL)

    def on_url(self, url: bytes) -> None:
        exchange = self.parsing
        exchange.url += url
        exchange.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.parsing
        exchange.head_bytes += len(name) + len(value) + 4
        if exchange.state is not HEAD:
            # After the head, fields are trailers of a chunked body.
            if allowed_request_trailer(name):
                if exchange.trailers is None:
                    exchange.trailers = []
                exchange.trailers.append((name, value))
            return
        names = REQUEST_NAME_ACTIONS
        action = names.get(name)
        if action is None:
            action = request_action(name)  # X-SSL-* in any spelling: REQ_DROP, a spoof
        if action == REQ_FORWARD:
            exchange.headers.append((name, value))
        elif action == REQ_HOST:
            if exchange.host is not None:
                raise errors.ClientFault("more than one Host header")
            exchange.host = value
            exchange.headers.append((name, value))
        elif action == REQ_CONTENT_LENGTH:
            # llhttp has already refused malformed, duplicate or conflicting lengths.
            exchange.content_length = int(value)
            exchange.headers.append((name, value))
        elif action == REQ_TRANSFER_ENCODING:
            # llhttp refuses any final coding but chunked, and Content-Length with it.
            exchange.chunked = True
        elif action == REQ_CONNECTION:
            _note_connection_header(exchange, value)
        elif action == REQ_EXPECT:
            if value.lower() == b"100-continue":
                exchange.expect_continue = True
            else:
                raise errors.ExpectationFailed("unsupported Expect")
        elif action == REQ_FORWARDED_FOR:
            exchange.forwarded_for = (
                value if exchange.forwarded_for is None else exchange.forwarded_for + b", " + value
            )
        elif action == REQ_VIA:
            exchange.via = value if exchange.via is None else exchange.via + b", " + value
        elif action == REQ_UPGRADE:
            exchange.upgrade = value if exchange.upgrade is None else exchange.upgrade + b", " + value
        elif action == REQ_REQUEST_ID and self.trusted and exchange.request_id is None:
            # Only a trusted proxy's id is kept; anyone else's could collide or inject into logs.
            exchange.request_id = value
        elif (action == REQ_REAL_IP and self.trusted and exchange.real_ip is None
              and not self.ctx.trusted.everyone):
            # Trusting everyone (the default, for appending X-Forwarded-For) vouches for no
            # address: as nginx's $remote_addr without set_real_ip_from, the peer's is sent.
            exchange.real_ip = value

    def on_headers_complete(self) -> None:
        exchange = self.parsing
        limits = self.ctx.limits
        if exchange.head_bytes > limits.max_header_bytes:
            raise errors.HeadTooLarge("request head too large")
        self.head_raw = 0
        if self.line_11:  # only the first request of its parser (see data_received)
            self.line_11 = False
            version = "1.1"
        else:
            version = self.parser.get_http_version()
        if version == "1.1":
            if exchange.host is None:
                raise errors.ClientFault("HTTP/1.1 request without Host")
            exchange.keep_alive = not exchange.conn_close
        elif version == "1.0":
            exchange.version = "1.0"
            exchange.keep_alive = exchange.conn_keep_alive and not exchange.conn_close
        elif version.startswith("0."):
            raise errors.ClientFault("HTTP/0.9 request")
        else:
            raise errors.UnsupportedVersion(f"HTTP/{version}")
        if exchange.hop_names is not None:
            exchange.headers = remove_named(exchange.headers, exchange.hop_names)
        exchange.method = self.parser.get_method()
        exchange.is_head = exchange.method == b"HEAD"
        if exchange.method == b"CONNECT":
            raise errors.ClientFault("CONNECT is not supported")
        if exchange.url[:1] != b"/":
            self._absolute_form(exchange)
        if exchange.host is not None and not valid_host(exchange.host):
            raise errors.ClientFault("invalid Host")
        if HASH in exchange.url:
            raise errors.ClientFault("fragment in the request target")
        if limits.max_body_bytes and (exchange.content_length or 0) > limits.max_body_bytes:
            raise errors.BodyTooLarge("declared body too large")
        if not exchange.chunked and not exchange.content_length:
            exchange.expect_continue = False
            self.when = None  # no read deadline
        else:
            self.ctx.wheel.set(self, limits.body_timeout)
        if self.state is CLOSING:
            exchange.close_after = True
        # Started once feed_data returns (data_received), or when the requests before it are answered.
        exchange.transition(WAITING_TURN)

    def on_body(self, body: bytes) -> None:
        self.head_raw = 0
        self._request_body(self.parsing, body)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        self.parsing = None
        self.requests_served += 1
        exchange.request_done = True
        if self.state is not CLOSED:
            self.when = None  # no read deadline
        if exchange.state is FINISHED:  # `finished`, without the property lookup (every request)
            return
        upstream = exchange.upstream
        if upstream is not None and exchange.chunked:
            upstream.send_request_bytes(last_chunk(exchange.trailers))

    # ------------------------------------------------------- request side
    def _absolute_form(self, exchange: Exchange) -> None:
        url = exchange.url
        if url == b"*" and exchange.method == b"OPTIONS":
            return
        lowered = url[:8].lower()
        if not (lowered.startswith(b"http://") or lowered.startswith(b"https://")):
            raise errors.ClientFault("invalid request target")
        rest = url.split(b"://", 1)[1]
        slash = rest.find(b"/")
        authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        if not authority:
            raise errors.ClientFault("absolute URI without host")
        # RFC 9112 3.2.2: the target's authority replaces any Host header.
        exchange.host = authority
        exchange.headers = [(n, v) for n, v in exchange.headers if n.lower() != b"host"]
        exchange.headers.append((b"Host", authority))
        exchange.url = path

    def _start_ready(self) -> None:
        """Start the request at the head of the queue if its head is parsed and it has not started.

        Requests behind it are started in turn as each response finishes (_finish).
        """
        exchanges = self.exchanges  # empty once the connection is closed
        if exchanges and exchanges[0].state is WAITING_TURN:
            self._start(exchanges[0])

    def _read_held(self) -> None:
        """An upgrade request got an answer other than 101: what the client sent after its
        head is parsed as the next request (never passed on unparsed)."""
        held = self.upgrade_held
        self.upgrade_held = None
        self.resume_reading(PAUSE_UPGRADE)
        if held:
            self.data_received(held)

    def _drop_request_body(self, exchange: Exchange) -> None:
        """The client is still sending the body of a redirected request: the rest is not read (it
        goes nowhere), and the connection closes after the answer (response_keep_alive sees
        CLOSING), with a lingering close, so no body byte is ever parsed as the next request."""
        self.stop_splice()
        self.when = None  # no read deadline
        self._stop_reading_requests()

    def _request_body(self, exchange: Exchange, body: bytes) -> None:
        size = len(body)
        exchange.body_received += size
        limit = self.ctx.limits.max_body_bytes
        if limit and exchange.body_received > limit:
            raise errors.BodyTooLarge("body too large")
        if exchange.finished:
            return  # already answered (e.g. failed); the rest of the body is discarded
        upstream = exchange.upstream
        if upstream is not None:
            exchange.body_streamed = True
            if exchange.chunked:
                upstream.send_request_chunk(body)
            else:
                upstream.send_request_bytes(body)
            return
        exchange.body_buffer.append(body)
        exchange.body_buffered += size
        if exchange.body_buffered > self.ctx.limits.write_high_watermark:
            self.pause_reading(PAUSE_BUFFER_FULL)

    def _forward_length_body(self, data: bytes) -> bytes:
        """Pass Content-Length body bytes straight through; return what follows them."""
        remaining = self.bypass_remaining
        exchange = self.parsing
        if len(data) <= remaining:
            body, rest = data, b""
        else:
            view = memoryview(data)
            body, rest = bytes(view[:remaining]), bytes(view[remaining:])
        self.bypass_remaining = remaining - len(body)
        self.ctx.wheel.set(self, self.ctx.limits.body_timeout)
        try:
            self._request_body(exchange, body)
        except errors.ProxyFailure as failure:
            self.bypass_remaining = 0
            self._reject(failure)
            return b""
        if not self.bypass_remaining:
            self._length_body_done(exchange)
        else:
            self._try_splice(exchange)
        return rest

    def _length_body_done(self, exchange: Exchange) -> None:
        # The parser was skipped for the body: the next request's bytes get a fresh one.
        self.parser = None
        self.on_message_complete()
        if exchange.state is not HEAD and self.state is not CLOSED:
            self.when = None  # no read deadline

    # ---------------------------------------------------- zero-copy request body
    def _try_splice(self, exchange: Exchange) -> None:
        """Hand the rest of a large plaintext request body to splice(2), client socket to backend."""
        upstream = exchange.upstream
        if upstream is None or self.tls is not None or exchange.finished or self.state is CLOSED:
            return
        limit = self.ctx.limits.max_body_bytes
        if limit and exchange.content_length > limit:
            return  # the copying path answers 413 when the body gets there
        target = upstream.request_splice_target(self.bypass_remaining)
        if target is None:
            return  # TLS to the backend, too short, or bytes still queued for it (next read tries again)
        pipes, destination = target
        exchange.body_streamed = True  # never replayed: the body leaves without a copy kept
        self.pause_reading(PAUSE_SPLICE)
        self.splice = BodySplice(self.ctx.loop, pipes, self.transport, destination, self.bypass_remaining,
                                 self)

    def splice_read(self, size: int) -> None:
        """The splice took `size` body bytes from the client."""
        self.parsing.body_received += size
        self.ctx.wheel.set(self, self.ctx.limits.body_timeout)

    def splice_written(self, size: int) -> None:
        """The splice gave `size` body bytes to the backend (counted as read, in splice_read)."""

    def splice_waiting(self, for_destination: bool) -> None:
        """Whose timeout applies: the backend's write timeout while it does not read, else the body's."""
        upstream = self.parsing.upstream
        if for_destination:
            self.when = None  # no read deadline
        else:
            self.ctx.wheel.set(self, self.ctx.limits.body_timeout)
        if upstream is not None:
            upstream.request_splice_waiting(for_destination)

    def splice_ended(self, outcome: int) -> None:
        self.splice = None
        exchange = self.parsing
        self.bypass_remaining = 0  # the splice counted the rest of the body itself
        if exchange.upstream is not None:
            exchange.upstream.request_splice_waiting(False)
        if outcome == SPLICE_DONE:
            if not self.reads_capped:
                self.reads_capped = True
                self.transport.set_protocol(HeadReads(self))  # paused: uvloop picks the read path at resume
            self.resume_reading(PAUSE_SPLICE)
            self._length_body_done(exchange)
        elif outcome == SPLICE_SOURCE_CLOSED:
            # As in eof_received: the backend must not take a cut body as complete.
            self._fail_current(exchange, errors.ClientFault("request body truncated"))
            self.close()
        elif exchange.upstream is not None:
            exchange.upstream.close()  # the backend refused the bytes: its loss fails the exchange

    def send_continue(self, exchange: Exchange) -> None:
        """Tell a client waiting on Expect: 100-continue to send its body."""
        if exchange.expect_continue and not exchange.request_done:
            exchange.expect_continue = False
            if self.transport is not None and exchange.version == "1.1":
                self.transport.write(errors.CONTINUE_100)

    # ------------------------------------------- response side (Downstream)
    def informational(self, exchange: Exchange, status: int, reason: bytes, headers: Fields) -> None:
        if status == 100:
            # The proxy answers Expect itself and does not forward it, so a 100 is ours to drop.
            self.send_continue(exchange)
        elif exchange.version == "1.1" and self.transport is not None:
            lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
            serialize_fields(lines, headers)
            lines.append(b"\r\n")
            self.transport.write(b"".join(lines))

    def start_response(self, exchange: Exchange, status: int, reason: bytes, headers: Fields,
                       version: str, via: bytes | None, body: int) -> None:
        """Frame the response for this client and hold its head: the first body bytes or flush() send it."""
        self.body_filter = None
        if exchange.phases.response_side:
            framed = self._response_phases(exchange, status, reason, headers, body)
            if framed is None:
                return  # response_filter failed: its error replaced the response
            status, reason, headers, body = framed
        keep_alive = self.response_keep_alive(exchange)
        # The head as pieces for one join (serialize_fields); the status line's start and the
        # usual Via made once, not formatted per response.
        head = [STATUS_LINE_STARTS[status - 100] if 100 <= status < 1000 else b"HTTP/1.1 %d " % status,
                reason, b"\r\n"]
        serialize_fields(head, headers)
        own_via = self.ctx.via
        if own_via:
            if via:
                head.extend((b"Via: ", via, b", "))
            else:
                head.append(b"Via: ")
            head.extend((b"1.1" if version == "1.1" else version.encode(), b" ", own_via, b"\r\n"))
        elif via:
            head.extend((b"Via: ", via, b"\r\n"))
        if body == BODY_LENGTH:
            self.response_framing = FRAME_RAW
        elif body == BODY_NONE:
            self.response_framing = FRAME_NONE
        elif exchange.version == "1.1":
            self.response_framing = FRAME_CHUNKED
            head.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.response_framing = FRAME_RAW
            keep_alive = False  # HTTP/1.0 has no chunked: the close ends the body
        if exchange.version == "1.0":
            head.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        else:
            head.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
        self.answer_keep_alive = keep_alive
        exchange.response_started = True
        held = self.held_head = b"".join(head)
        self.sent += len(held)

    def switch_protocols(self, exchange: Exchange, reason: bytes, headers: Fields, via: bytes | None,
                         protocol: bytes, backend: asyncio.Transport, rest: bytes,
                         pipes: PipePool | None) -> None:
        """Send the backend's 101 on, then hand this transport and the backend's to a Tunnel.

        The 101 passes through the route's response header policy (as the backend side
        applied it) but no response_filter: the connection is no longer HTTP. The exchange
        is reported (access log, logging phase, metrics) when the tunnel closes.
        """
        head = [b"HTTP/1.1 101 " + reason + b"\r\n"]
        serialize_fields(head, headers)
        own_via = self.ctx.via
        if own_via or via:
            head.append(b"Via: " + b", ".join(v for v in (via, own_via and b"1.1 " + own_via) if v) + b"\r\n")
        head.append(b"Upgrade: " + protocol + b"\r\nConnection: upgrade\r\n\r\n")
        to_client = b"".join(head) + rest
        exchange.status = 101
        exchange.response_started = True
        self.sent += len(to_client)
        held = self.upgrade_held or b""
        self.upgrade_held = None
        self._read_pauses = 0  # the tunnel reads from now on
        self._transition(TUNNELLED)
        self.ctx.wheel.cancel(self)
        if self.send_deadline is not None:
            self.send_deadline.release()
        self.ctx.clients.discard(self)
        self.exchanges = None  # as on an idle connection: the tunnel holds the exchange
        self.parsing = None
        self.parser = None
        tunnel = Tunnel(self.ctx.tunnels, exchange, self.transport, backend,
                        pipes if self.tls is None else None, self.ctx.limits.tunnel_idle_timeout,
                        self._tunnel_closed)
        tunnel.start(held, to_client)

    def _tunnel_closed(self, tunnel: Tunnel) -> None:
        """The tunnel ended: one access-log record for it, its duration the exchange's."""
        exchange = tunnel.exchange
        exchange.body_received += tunnel.client.read
        self.sent += tunnel.backend.read
        self._transition(CLOSED)
        self.ctx.observer.tunnel_closed(tunnel.reason, tunnel.client.read, tunnel.backend.read)
        self._report(exchange)

    def _replace_response(self, exchange: Exchange, failure: errors.PhaseFailed) -> None:
        """response_filter failed: the client gets the error response instead of the server's.

        The backend side goes on relaying the server's body (its connection stays reusable);
        with FRAME_NONE none of it reaches the client, and the connection closes at the end.
        """
        exchange.failure = failure
        exchange.resp = None
        response = None
        if exchange.phases.fail_to_proxy is not None:
            response = calls.fail_to_proxy(exchange, failure)
        if response is None:
            data = errors.error_response(failure, False, exchange.is_head)
            exchange.status = failure.status
        else:
            data = calls.response_bytes(response, False, exchange.is_head, exchange.version)
            exchange.status = response.status
        exchange.response_started = True
        self.response_framing = FRAME_NONE
        self.answer_keep_alive = False
        self.held_head = data
        self.sent += len(data)

    def flush(self) -> None:
        """Send a held response head now (no body bytes came with it in this read)."""
        head = self.held_head
        if head is not None:
            self.held_head = None
            self.transport.write(head)
        if self.corked:
            # The backend read ended before the response did: what it brought goes out now,
            # not with the FIN (cork holds a part-full segment for up to 200 ms).
            self.corked = False
            set_cork(self.transport.get_extra_info("socket").fileno(), False)

    def _cork_last_response(self) -> None:
        """The response about to be written is the connection's last (it closes after it):
        cork the socket, so that if the backend read that brought it also ends it, the close's
        FIN leaves in the same segment as its last bytes: one packet and one wake-up of the
        client instead of two. Linux tacks the FIN onto an unsent segment (tcp_send_fin); the
        close or shutdown pushes it. flush() uncorks when the read ends with the response
        unfinished, so no bytes wait past the read that brought them. Plain TCP only: a TLS
        close sends its close_notify record first."""
        if self.tls is None and not self.corked:
            self.corked = True
            set_cork(self.transport.get_extra_info("socket").fileno(), True)

    def response_keep_alive(self, exchange: Exchange) -> bool:
        """Decide, at response-head time, whether the connection survives this exchange."""
        return (
            exchange.keep_alive is not False
            and not exchange.close_after
            and exchange.request_done
            and self.state is BUSY
            # A draining worker closes after each response: saying keep-alive and then
            # closing would race the client's next request.
            and not self.ctx.draining
        )

    def send_body(self, data: bytes) -> None:
        if self.body_filter is not None:
            data = self._filter_body(self.exchanges[0], data, False)
            if not data:
                return  # held back by the filter (an empty chunk would end a chunked body)
        self.sent += len(data)
        framing = self.response_framing
        head = self.held_head
        if head is None:
            if framing == FRAME_RAW:
                self.transport.write(data)
            elif framing == FRAME_CHUNKED:
                self.transport.writelines((chunk_header(len(data)), data, b"\r\n"))
            return
        self.held_head = None
        if not self.answer_keep_alive:
            self._cork_last_response()
        if framing == FRAME_RAW:
            self.transport.writelines((head, data))
        elif framing == FRAME_CHUNKED:
            self.transport.writelines((head, chunk_header(len(data)), data, b"\r\n"))
        else:
            self.transport.write(head)

    def finish(self, exchange: Exchange, trailers: Fields | None) -> None:
        """The backend's response is complete: end the framing and move to the next request."""
        if self.body_filter is not None:
            # The filter's last call (end=True) may return the bytes it held back.
            tail = self._filter_body(exchange, b"", True)
            self.body_filter = None
            if exchange.finished:
                return  # the filter failed: the response was cut
            if tail:
                self.send_body(tail)
        head = self.held_head
        self.held_head = None
        if not self.answer_keep_alive and (head is not None or self.response_framing == FRAME_CHUNKED):
            self._cork_last_response()  # the close follows at once (_finish)
        if self.response_framing == FRAME_CHUNKED:
            ending = last_chunk(trailers)
            self.transport.write(ending if head is None else head + ending)
        elif head is not None:
            self.transport.write(head)
        self._finish(exchange, self.answer_keep_alive)

    def response_splice_target(self) -> asyncio.Transport | None:
        transport = self.transport
        if (self.tls is not None or self.response_framing != FRAME_RAW or self.held_head is not None
                or self.body_filter is not None  # every body byte goes through the operator's filter
                or transport.get_write_buffer_size()):
            return None  # TLS needs user-space bytes; buffered output must go first (it will drain)
        return transport

    def response_spliced(self, size: int) -> None:
        self.sent += size

    def response_splice_blocked(self, blocked: bool) -> None:
        if blocked:
            self._arm_send_deadline()
        elif self.send_deadline is not None:
            self.send_deadline.clear()

    def abort_response(self, exchange: Exchange) -> None:
        """The response broke after it started: the client can only see a cut connection."""
        self.flush()
        exchange.transition(FINISHED)
        exchange.upstream = None
        if exchange.failure is None:
            exchange.failure = errors.BadBackendResponse("response cut")  # what the logging phase is told
        log.warning("response to %s %s cut: the backend connection broke",
                    exchange.method.decode(), exchange.url.decode(errors="replace"), extra=about(exchange))
        self._report(exchange)
        self.close(force=True)

    def _send_error(self, exchange: Exchange, failure: errors.ProxyFailure, keep_alive: bool) -> None:
        response = errors.error_response(failure, keep_alive, exchange.is_head)
        self.sent += len(response)
        self.transport.write(response)
        self._finish(exchange, keep_alive)

    def _send_answer(self, exchange: Exchange, response: Response, keep_alive: bool) -> None:
        data = calls.response_bytes(response, keep_alive, exchange.is_head, exchange.version)
        self.sent += len(data)
        self.transport.write(data)
        self._finish(exchange, keep_alive)

    def _closed(self) -> bool:
        return self.state is CLOSED

    def _finish(self, exchange: Exchange, keep_alive: bool) -> None:
        if exchange.state is not FINISHED:  # `finished`, without the property lookup
            exchange.transition(FINISHED)
        exchange.upstream = None
        self._report(exchange)
        if self.state is CLOSED:
            return
        if self.exchanges and self.exchanges[0] is exchange:
            self.exchanges.pop(0)
        if not keep_alive or not exchange.request_done:
            if (exchange.keep_alive is False and not exchange.close_after and exchange.request_done
                    and self.state is BUSY and not self.exchanges and not self._read_pauses):
                # The client said this request was its last (`Connection: close`, or HTTP/1.0
                # without keep-alive: RFC 9112 9.6, it MUST NOT send more) and it was read
                # whole, with nothing after it (llhttp refuses bytes after such a request,
                # which moves us to CLOSING): nothing can arrive that a reset would lose, so
                # no lingering close, as nginx (ngx_http_finalize_connection lingers only
                # when input may still come). Our own decisions to close (errors, an unread
                # body, draining) keep lingering.
                self.client_done = True
            self.close()
            return
        if self._read_pauses & PAUSE_PIPELINE_FULL and (
            len(self.exchanges) <= self.ctx.max_pipelined // 2
        ):
            self.resume_reading(PAUSE_PIPELINE_FULL)
        if self.exchanges:
            following = self.exchanges[0]
            if following.state is WAITING_TURN:
                self._start(following)
        elif self.state is CLOSING:
            self.close()
        else:
            self._transition(IDLE)
            first_idle = not self.compact_due
            self.compact_due = True
            self.ctx.wheel.set(self, self.ctx.keepalive_timeout)
            # Every request so far is parsed and answered: the queue starts afresh, and the
            # parser, between two messages, could take the next request as it is. It is kept
            # from the second time the connection goes idle: a client that came back is a busy
            # one, and a kept parser saves 4% of each of its requests. The first time, it goes,
            # as nginx frees a request's buffers at every keep-alive: a client that sends one
            # request and waits (a browser's spare connection) then holds none until it is
            # compacted; 10k of them holding one raised the allocator's high-water mark from
            # 0.45 to 0.53-0.57 KiB per idle connection (perf/README.md). After an upgrade request
            # llhttp stopped at, it does not start over: the bytes it held back are the next
            # request, for a fresh parser.
            self.exchanges = None
            after_upgrade = self._read_pauses & PAUSE_UPGRADE
            if first_idle or after_upgrade:
                self.parser = None
            if after_upgrade:
                self._read_held()

    # ----------------------------------------------------- errors & close
    def _reject(self, failure: errors.ProxyFailure) -> None:
        """A client-side protocol error: log it, answer it (if we still can) and close."""
        exchange = self.parsing
        log.info("client %s: %d %s", self.peer_ip.decode(), failure.status, failure,
                 extra=about(exchange) if exchange is not None else None)
        self._refuse(failure)

    def _refuse(self, failure: errors.ProxyFailure) -> None:
        """_reject without the log line."""
        exchange = self.parsing
        self.bypass_remaining = 0
        self._stop_reading_requests()
        if exchange is None:
            if self.transport is not None and self.state is not CLOSED:
                self.transport.write(errors.error_response(failure, False))
            self.close()
            return
        exchange.close_after = True
        exchange.keep_alive = False
        if exchange.upstream is not None:
            exchange.upstream.abandon()
            exchange.upstream = None
        if exchange is self.exchanges[0]:
            if exchange.response_started:
                self.abort_response(exchange)
            else:
                self._detach_pending(exchange)
                self.fail(exchange, failure)
        else:
            # Answer the earlier requests first; this one is answered in its turn.
            exchange.failure = failure
            if exchange.state is HEAD:
                exchange.transition(WAITING_TURN)

    def _stop_reading_requests(self) -> None:
        if self.state in (IDLE, BUSY):
            self._transition(CLOSING)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def on_expiry(self) -> None:
        """The read deadline passed (called by the timer wheel)."""
        if self.state is CLOSED:
            self.transport.close()  # the lingering close is over
            return
        exchange = self.parsing
        if exchange is None:
            self.close()  # idle keep-alive or silent new connection: close quietly, like nginx
        elif exchange.state is HEAD:
            if self._read_pauses:
                # We stopped reading (a full pipeline, a held upgrade): the rest of the head may
                # be waiting unread, and the delay is ours. The client is given the timeout again.
                self.ctx.wheel.set(self, self.ctx.header_timeout)
                return
            self._note_timeout(metrics.T_HEADER, "408 request head timed out", exchange)
            self._refuse(errors.ClientTimeout("request head timed out"))
        else:
            self._note_timeout(metrics.T_BODY, "request body timed out", exchange)
            self._fail_current(exchange, errors.ClientTimeout("request body timed out"))
            self.close(force=True)

    def _compact(self) -> bool:
        """Idle since `compact_after`: hand the transport to an IdleClient (appliance/http/idle.py),
        which keeps what the next request needs, and let this connection go; a plain
        connection's socket then leaves uvloop for the idle epoll set. False (nothing
        done) while anything is still under way on it: output not yet sent, reading paused."""
        transport = self.transport
        if (self._read_pauses or self.write_paused or self.client_done or self.splice is not None
                or self.phase_task is not None or self.body_filter is not None
                or self.upgrade_held is not None or transport.is_closing()
                or transport.get_write_buffer_size()):
            return False
        ctx = self.ctx
        listener = self.listener
        # The peer facts come back as the tuple every connection from this address shares.
        idle = IdleClient(listener, transport, ctx.peers.facts(self.peer_ip.decode(), listener.proto),
                          self.peer_port, self.tls, self.when)  # the keep-alive deadline goes along
        ctx.wheel.cancel(self)
        self.parser = None  # its bound methods refer back here: reference counting frees both
        transport.set_protocol(idle)
        if listener.site is None:  # TLS: the session lives in the transport, which stays
            ctx.idle.detach(idle)  # a plain connection leaves uvloop: its fd waits in the idle epoll set
        if self.send_deadline is not None:
            self.send_deadline.release()
        ctx.clients.discard(self)
        self._transition(CLOSED)  # a late call on this object does nothing
        ctx.idle.push(idle)
        return True

    def _arm_send_deadline(self) -> None:
        deadline = self.send_deadline
        if deadline is None:
            deadline = self.send_deadline = Deadline(self.ctx.loop, self._on_send_timeout)
        deadline.set(self.ctx.limits.send_timeout)

    def _cancel_deadlines(self) -> None:
        self.ctx.wheel.cancel(self)
        if self.send_deadline is not None:
            self.send_deadline.cancel()

    def _on_send_timeout(self) -> None:
        self._note_timeout(metrics.T_SEND, "send timeout", self.exchanges[0] if self.exchanges else None)
        self.close(force=True)

    def pause_reading(self, reason: int) -> None:
        if not self._read_pauses and self.transport is not None:
            self.transport.pause_reading()
        self._read_pauses |= reason

    def uncap_reads(self) -> None:
        """A request ended within a capped read, so without a splice (HeadReads saw it): back
        to uvloop's plain 256 KiB reads. (The transport is still ours: only a read in which
        no request ends can hand it to HTTP/2, and a 101 comes in a backend read.)"""
        self.reads_capped = False
        self.transport.set_protocol(self)  # a reading uvloop transport restarts its reads on the new path

    def resume_reading(self, reason: int) -> None:
        if not self._read_pauses & reason:
            return
        self._read_pauses &= ~reason
        if not self._read_pauses and self.state in (IDLE, BUSY):
            self.transport.resume_reading()

    def local_address(self) -> tuple[str, int] | None:
        """The address the client connected to (for a PROXY header to a backend), if known."""
        local = self.transport.get_extra_info("sockname") if self.transport is not None else None
        return (local[0], local[1]) if local else None

    def shutdown(self) -> None:
        """Graceful stop: finish what is in flight, close when idle."""
        if self.state is IDLE:
            self.close()
        elif self.state is BUSY:
            self._transition(CLOSING)
            for exchange in self.exchanges:
                exchange.close_after = True

    def close(self, force: bool = False) -> None:
        if self.state is CLOSED:
            return
        self.stop_splice()
        self._transition(CLOSED)
        self._cancel_deadlines()
        if self.exchanges:
            for exchange in self.exchanges:
                self._abandon(exchange)
        self.exchanges = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if force:
            transport.abort()
        elif transport.can_write_eof() and not self.client_done:
            # Lingering close (nginx's lingering_close): send FIN once our output is flushed,
            # then read and drop what the client still sends until it closes or LINGER_SECONDS
            # pass. Closing with unread input would send a reset, which can destroy a response
            # the client has not read yet, or turn a keep-alive race into an error. A client
            # done sending (client_done) gets a plain close once our output is flushed.
            transport.write_eof()
            transport.resume_reading()
            self.ctx.wheel.set(self, LINGER_SECONDS)
        else:
            transport.close()


def compact_idle(ctx: WorkerContext) -> None:
    """Compact every keep-alive connection of the worker idle for `compact_after` or longer
    (ClientConnection._compact); called by the worker's sweep every `compact_after`, so a
    connection compacts between one and two spells after its last response."""
    # An idle connection's read deadline is its keep-alive deadline, set when it went idle.
    idle_since_before = ctx.loop.time() - ctx.compact_after + ctx.keepalive_timeout
    for client in [c for c in ctx.clients if type(c) is ClientConnection]:
        if client.compact_due and client.state is IDLE and client.when is not None \
                and client.when <= idle_since_before:
            client._compact()
