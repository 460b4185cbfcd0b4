"""What every downstream shares: starting a request, its phases, routing, and error answers.

A downstream is whatever sent a request and gets its response back through the seam
(appliance/http/exchange.py, `Downstream`): an HTTP/1 client connection
(appliance/http/downstream.py) or one HTTP/2 stream (appliance/http/h2_downstream.py).
Both start a parsed request the same way, here: the built-in checks, the vhost, its
operator phases new_ctx and request_filter, the rule and its rewrite, upstream_peer, the
pool; and both answer a proxy-generated error the same way, up to the bytes: how a
response is framed for the peer is each subclass's own (`_send_error`, `_answer`,
`start_response`, ...).

In the compiled build this is the `cdef class` the backend side types its client as
(appliance/upstream/connection.pxd): the seam's methods are `cpdef` here and overridden by
each subclass, so a backend read calls its downstream through a C vtable, whichever kind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from appliance.http import errors
from appliance.http.exchange import (
    AWAITING_PHASE,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    FINISHED,
    HEAD,
    PENDING,
    Exchange,
    Fields,
)
from appliance.http.target import PathAboveRoot, normalize_path
from appliance.observe.errorlog import about
from appliance.observe.observer import CLIENT_CLOSED
from appliance.phases import Peer, Response, ResponseHead, calls, eager
from appliance.phases.dispatch import body_bytes, response_or_none
from appliance.upstream.splice import PipePool, SpliceHolder

if TYPE_CHECKING:
    from appliance.context import WorkerContext
    from appliance.routing.router import Vhost
    from appliance.tls.contexts import TlsSite
    from appliance.tls.session import TlsConnection

log = logging.getLogger("rproxyd.client")


class DownstreamBase(SpliceHolder):  # uvloop calls protocol methods by name: no asyncio.Protocol base
    """The shared half of a downstream; subclasses frame for their peer."""

    __slots__ = (
        "body_filter",
        "ctx",
        "forwarded_tail",
        "peer_ip",
        "peer_port",
        "phase_task",
        "sent",
        "tls",
        "trusted",
        "write_paused",
    )

    def __init__(self, ctx: WorkerContext, tls: TlsSite | TlsConnection | None) -> None:
        self.ctx = ctx
        # On a TLS listener: the listener's fallback site until the handshake's TlsConnection
        # replaces it (ClientConnection.connection_made). None on plain HTTP.
        self.tls = tls
        self.sent = 0  # response bytes written for the exchange now answering
        # The route's response_body_filter while a response goes through it, else None.
        self.body_filter: Callable[..., Any] | None = None
        self.write_paused = False
        self.peer_ip = b""  # the peer's address, shared by the connections from it (appliance/http/peer.py)
        self.peer_port = 0  # 0: the socket reported no peer
        self.trusted = True  # the peer is a trusted proxy: its X-Forwarded-For is kept
        self.forwarded_tail = b""
        self.splice = None  # set while a request body goes through splice(2) (HTTP/1 only)
        # The Task of an async request_filter or upstream_peer that suspended (one at a time
        # per downstream): cancelled if the exchange ends first.
        self.phase_task: asyncio.Task | None = None

    # ----------------------------------------------------------- starting a request
    def _start(self, exchange: Exchange) -> None:
        """Run the request phases for the exchange at the head of the queue, then route it.

        The built-in request filter first (a client error found while parsing, a path above
        the root, a Host the TLS session may not ask for), then the vhost's operator phases:
        new_ctx and request_filter, which may answer. Routing follows in _route.
        """
        if exchange.failure is not None:
            self.fail(exchange, exchange.failure)
            return
        host = exchange.host or b""
        url = exchange.url
        query = url.find(b"?")
        raw_path = url if query < 0 else url[:query]
        try:
            path = normalize_path(raw_path)
        except PathAboveRoot:
            self.fail(exchange, errors.ClientFault("request path climbs above the root"))
            return
        if path is not raw_path:
            url = path if query < 0 else path + url[query:]  # routed, rewritten and sent on
        router = self.ctx.router
        tls = self.tls
        if tls is not None:
            refusal = tls.refusal(router.vhost_name(host))
            if refusal is not None:
                self.fail(exchange, refusal)
                return
        vhost = router.vhost(host)
        exchange.target = url  # what phases see as req.path and req.query until the route's rewrite
        if vhost is not None and vhost.phases.new_ctx is not None and not exchange.redirects:
            exchange.phases = vhost.phases
            if not self._request_phases(exchange, vhost, path):
                return
        self._route(exchange, vhost, path)

    def _request_phases(self, exchange: Exchange, vhost: Vhost, path: bytes) -> bool:
        """new_ctx and request_filter; True to go on to routing (else answered, failed or awaiting)."""
        phases = exchange.phases
        try:
            exchange.phase_ctx = phases.new_ctx()
        except Exception as exc:
            self.fail(exchange, calls.failed(exchange, "new_ctx", exc))
            return False
        request_filter = phases.request_filter
        if request_filter is None:
            return True
        try:
            result = request_filter(calls.request_view(exchange), exchange.phase_ctx)
            if phases.request_filter_async:
                finished, result = self._run_async_phase(
                    exchange, result, partial(self._request_filter_done, exchange, vhost, path))
                if not finished:
                    return False
            # None (go on) is the usual result: checked here, without a call into dispatch.py.
            response = None if result is None else response_or_none(result, "request_filter")
        except Exception as exc:
            self.fail(exchange, calls.failed(exchange, "request_filter", exc))
            return False
        if response is None:
            return True
        self._answer(exchange, response, self.response_keep_alive(exchange))
        return False

    def _request_filter_done(self, exchange: Exchange, vhost: Vhost, path: bytes, task: asyncio.Task) -> None:
        """An async request_filter that suspended has completed."""
        if not self._phase_completed(task):
            return
        try:
            response = response_or_none(task.result(), "request_filter")
        except (Exception, asyncio.CancelledError) as exc:
            self.fail(exchange, calls.failed(exchange, "request_filter", exc))
            return
        if response is not None:
            self._answer(exchange, response, self.response_keep_alive(exchange))
            return
        self._route(exchange, vhost, path)

    def _run_async_phase(self, exchange: Exchange, coro: Any,
                         on_done: Callable[[asyncio.Task], None]) -> tuple[bool, Any]:
        """Drive an async phase's coroutine; (True, its result), or (False, its Task) if it suspended.

        A suspended phase is awaited with reading going on, as while a request waits for a
        server (a body is buffered, pipelined requests queue, both bounded), so a client that
        goes away is seen and the phase cancelled (_cancel_phase); `on_done` goes on with it.
        """
        finished, result = eager.start(coro, self.ctx.loop)
        if not finished:
            exchange.transition(AWAITING_PHASE)
            self.phase_task = result
            result.add_done_callback(on_done)
        return finished, result

    def _phase_completed(self, task: asyncio.Task) -> bool:
        """Whether the async phase that just completed still has an exchange to go on with."""
        if task is not self.phase_task:
            # Cancelled: the exchange ended first. Whatever the phase made of its cancellation
            # goes nowhere (retrieved here, so asyncio logs no "exception was never retrieved").
            if not task.cancelled():
                task.exception()
            return False
        self.phase_task = None
        return True

    def _cancel_phase(self, exchange: Exchange) -> None:
        """The exchange ends while its async request_filter or upstream_peer awaits: cancel it.

        As an asyncio server cancels a request's handler when its client goes away: the
        phase sees CancelledError at its await (its `finally` and `async with` blocks run),
        and the logging phase still runs, once, when the exchange is reported.
        """
        task = self.phase_task
        if task is not None and exchange.state is AWAITING_PHASE:  # None once the phase completed
            self.phase_task = None
            task.cancel()

    def _route(self, exchange: Exchange, vhost: Vhost | None, path: bytes) -> None:
        """Pick the rule (the built-in part of upstream_peer), apply its rewrite, ask its backend."""
        route = vhost.match(exchange.method, path) if vhost is not None else None
        if route is None:
            allowed = vhost.methods_for(path) if vhost is not None else None
            self.fail(exchange, errors.MethodNotAllowed(allowed) if allowed else errors.NoRoute("no route"))
            return
        if exchange.method == b"TRACE" and not route.allow_trace:
            self.fail(exchange, errors.MethodNotAllowed(route.allowed_methods()))
            return
        exchange.route = route
        exchange.backend = route.backend
        exchange.target = route.target(exchange.target)
        if exchange.upgrade is not None and not self._offer_upgrade(exchange, route):
            return
        if exchange.phases.upstream_peer is not None:
            self.choose_peer(exchange)
            return
        route.backend.acquire(exchange)

    def _offer_upgrade(self, exchange: Exchange, route: Any) -> bool:
        """Keep in `exchange.upgrade` only the protocols the route lets a client switch to.

        None left (h2c is never among them), HTTP/1.0, no `Connection: upgrade`, or a request
        body: the request goes on as a plain one, without Upgrade. False: answered 503, since
        the rule holds its max_tunnels, or this worker drains (the next connection reaches the
        new generation).
        """
        tokens = [token.strip() for token in exchange.upgrade.split(b",")]
        offered = [token for token in tokens if token.lower().partition(b"/")[0] in route.upgrade]
        if (not offered or exchange.version != "1.1" or exchange.hop_names is None
                or b"upgrade" not in exchange.hop_names or exchange.chunked or exchange.content_length):
            exchange.upgrade = None
            return True
        if self.ctx.draining or self.ctx.tunnels.full(route):
            exchange.upgrade = None
            exchange.close_after = self.ctx.draining
            self.fail(exchange, errors.BackendUnavailable(
                "worker draining" if self.ctx.draining else f"{route.name}: max_tunnels open"))
            return False
        exchange.upgrade = b", ".join(offered)
        return True

    def choose_peer(self, exchange: Exchange, retry: bool = False) -> None:
        """upstream_peer: where the request goes; run before a server is picked and before each retry.

        An async phase that suspends is awaited as an async request_filter is (_run_async_phase).
        """
        phases = exchange.phases
        try:
            chosen = phases.upstream_peer(calls.request_view(exchange), exchange.phase_ctx)
            if phases.upstream_peer_async:
                finished, chosen = self._run_async_phase(
                    exchange, chosen, partial(self._upstream_peer_done, exchange, retry))
                if not finished:
                    return
            choice = self.ctx.peer_choice(chosen)
        except Exception as exc:
            self.fail(exchange, calls.failed(exchange, "upstream_peer", exc))
            return
        self._go_to_peer(exchange, choice, retry)

    def _upstream_peer_done(self, exchange: Exchange, retry: bool, task: asyncio.Task) -> None:
        """An async upstream_peer that suspended has completed."""
        if not self._phase_completed(task):
            return
        try:
            choice = self.ctx.peer_choice(task.result())
        except (Exception, asyncio.CancelledError) as exc:
            self.fail(exchange, calls.failed(exchange, "upstream_peer", exc))
            return
        self._go_to_peer(exchange, choice, retry)

    def _go_to_peer(self, exchange: Exchange, choice: str | Peer | None, retry: bool) -> None:
        """Send the request to the pool upstream_peer chose: the route's, a backend's, or a Peer's own."""
        if choice is None:
            pool = exchange.route.backend
        elif type(choice) is str:
            pool = self.ctx.pools[choice]
        else:
            pool = self.ctx.peer_pools.get(choice)
            if pool is None:
                self.fail(exchange, errors.BackendUnavailable(
                    f"upstream_peer chose {choice.address}: [phases] max_peer_pools reached"))
                return
        exchange.backend = pool
        if retry:
            pool.requeue(exchange)
        else:
            pool.acquire(exchange)

    def fail(self, exchange: Exchange, failure: errors.ProxyFailure) -> None:
        """Answer an exchange with a proxy-generated error response."""
        if exchange.finished or self._closed():
            return
        if exchange.response_started:
            if exchange.failure is None:
                exchange.failure = failure  # what cut it (the logging phase's error; a gRPC status)
            self.abort_response(exchange)
            return
        self._cancel_phase(exchange)
        blame_client = isinstance(failure, errors.ClientFault)
        if not blame_client:
            # The proxy-side error line for this request; client faults are logged where found.
            line = self.ctx.flood_log.log if failure.sampled else log.warning
            line("%s %s: %d %s", exchange.method.decode(), exchange.url.decode(errors="replace"),
                 failure.status, failure, extra=about(exchange))
        keep_alive = not blame_client and self.response_keep_alive(exchange)
        exchange.failure = failure
        if exchange.phases.fail_to_proxy is not None:
            response = calls.fail_to_proxy(exchange, failure)
            if response is not None:
                exchange.upstream = None
                self._answer(exchange, response, keep_alive)
                return
        exchange.response_started = True
        exchange.status = failure.status
        exchange.upstream = None
        self._send_error(exchange, failure, keep_alive)

    def _answer(self, exchange: Exchange, response: Response, keep_alive: bool) -> None:
        """Send a phase's own Response (request_filter's or fail_to_proxy's): no backend is asked."""
        exchange.response_started = True
        exchange.status = response.status
        if exchange.phases.logging is not None:
            exchange.resp = ResponseHead(response.status, response.headers.raw)
        self._send_answer(exchange, response, keep_alive)

    def _response_phases(self, exchange: Exchange, status: int, reason: bytes, headers: Fields,
                         body: int) -> tuple[int, bytes, Fields, int] | None:
        """response_filter and response_body_filter on a response head about to be framed,
        for a route whose phases include one of them or logging (start_response tests
        `response_side` first).

        Returns what to frame (status, reason, headers, body mode), or None: response_filter
        failed and `_replace_response` answered in the server's response's place.
        """
        phases = exchange.phases
        if phases.response_filter is not None or phases.logging is not None:
            resp = exchange.resp = ResponseHead(status, headers)
            if phases.response_filter is not None:
                failure = calls.response_filter(exchange, resp)
                if failure is not None:
                    self._replace_response(exchange, failure)
                    return None
                if resp.status != status:
                    status, reason = resp.status, calls.reason(resp.status)
                headers = resp.raw_headers
        if phases.response_body_filter is not None:
            # The filter may change the length: no Content-Length, the body framed by chunks
            # (HTTP/1.1), by the close (HTTP/1.0) or by the stream's end (HTTP/2), as nginx's
            # sub_filter does. HEAD, 204 and 304 have no body to filter; their Content-Length
            # would describe an unfiltered one. In place: the logging phase's view of the
            # response (exchange.resp) shows what the client got.
            headers[:] = [field for field in headers if field[0].lower() != b"content-length"]
            if body != BODY_NONE:
                self.body_filter = phases.response_body_filter
                body = BODY_UNTIL_CLOSE
        return status, reason, headers, body

    def _replace_response(self, exchange: Exchange, failure: errors.PhaseFailed) -> None:
        """response_filter failed: the client gets the error instead of the server's response."""
        raise NotImplementedError

    def redirect(self, exchange: Exchange, target: bytes) -> None:
        """Route the request again to another path, as a backend's internal redirect asked.

        As nginx's X-Accel-Redirect: the new request is a GET (a HEAD stays HEAD) without the
        body, which the backend that redirected has had.
        """
        if not exchange.request_done:
            self._drop_request_body(exchange)
        exchange.drop_body()
        exchange.upstream = None  # the backend that redirected is done with it
        exchange.redirects += 1
        exchange.url = target
        exchange.tried = []
        exchange.retries = 0
        exchange.transition(PENDING)
        self._start(exchange)

    def _filter_body(self, exchange: Exchange, data: bytes, end: bool) -> bytes:
        """response_body_filter over one piece of the body; b"" (and the response cut) if it fails."""
        try:
            return body_bytes(self.body_filter(calls.request_view(exchange), data, end, exchange.phase_ctx))
        except Exception as exc:
            self.body_filter = None
            self._fail_current(exchange, calls.failed(exchange, "response_body_filter", exc))
            return b""

    def _report(self, exchange: Exchange) -> None:
        # Once per exchange, however it ended: the logging phase, the access log and metrics.
        exchange.bytes_out = self.sent
        self.sent = 0
        if exchange.phases.logging is not None:
            calls.logging_phase(exchange)
        if exchange.req is not None:
            # The request view's lazy request id refers back to the exchange: without the views
            # (and the ctx a phase may have handed them to) the exchange is freed by reference
            # counting when it is done, instead of waiting for the cyclic GC.
            exchange.req = exchange.resp = exchange.phase_ctx = None
        self.ctx.observer.exchange_done(exchange)

    def _fail_current(self, exchange: Exchange, failure: errors.ProxyFailure) -> None:
        upstream = exchange.upstream
        if upstream is not None:
            upstream.abandon()
        self.fail(exchange, failure)

    def _detach_pending(self, exchange: Exchange) -> None:
        if exchange.state is PENDING and exchange.backend is not None:
            exchange.backend.cancel_pending(exchange)

    def _abandon(self, exchange: Exchange) -> None:
        """The client went away: release whatever the exchange holds."""
        if exchange.finished:
            return
        self._detach_pending(exchange)
        self._cancel_phase(exchange)
        upstream = exchange.upstream
        had_head = exchange.state is not HEAD  # a request line and headers arrived
        exchange.transition(FINISHED)
        exchange.upstream = None
        if upstream is not None:
            upstream.abandon()
        if had_head:
            exchange.status = exchange.status or CLIENT_CLOSED
            self._report(exchange)

    def _note_timeout(self, phase: int, what: str, exchange: Exchange | None) -> None:
        """Count a client timeout, and log it unless a flood of them is being sampled."""
        self.ctx.observer.client_timeout(phase)
        self.ctx.timeout_log.log("client %s: %s", self.peer_ip.decode(), what,
                                  extra=about(exchange) if exchange is not None else None)


    # ------------------------------------------- what each subclass frames itself
    def _send_error(self, exchange: Exchange, failure: errors.ProxyFailure, keep_alive: bool) -> None:
        """Send the proxy's error response for `failure` and finish the exchange."""
        raise NotImplementedError

    def _send_answer(self, exchange: Exchange, response: Response, keep_alive: bool) -> None:
        """Send a phase's own Response and finish the exchange."""
        raise NotImplementedError

    def _drop_request_body(self, exchange: Exchange) -> None:
        """An internal redirect while the peer still sends the body: read no more of it."""
        raise NotImplementedError

    def _finish(self, exchange: Exchange, keep_alive: bool) -> None:
        raise NotImplementedError

    def _closed(self) -> bool:
        """Nothing more can reach the peer: a failure is not answered."""
        raise NotImplementedError

    def response_keep_alive(self, exchange: Exchange) -> bool:
        """Whether the peer's connection survives this exchange (decided at response-head time)."""
        raise NotImplementedError

    def abort_response(self, exchange: Exchange) -> None:
        """The response broke after it started: cut it the way the peer's protocol can."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the seam (Downstream)
    def local_address(self) -> tuple[str, int] | None:
        raise NotImplementedError

    def send_continue(self, exchange: Exchange) -> None:
        raise NotImplementedError

    def informational(self, exchange: Exchange, status: int, reason: bytes, headers: Fields) -> None:
        raise NotImplementedError

    def start_response(self, exchange: Exchange, status: int, reason: bytes, headers: Fields,
                       version: str, via: bytes | None, body: int) -> None:
        raise NotImplementedError

    def send_body(self, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def finish(self, exchange: Exchange, trailers: Fields | None) -> None:
        raise NotImplementedError

    def pause_reading(self, reason: int) -> None:
        raise NotImplementedError

    def resume_reading(self, reason: int) -> None:
        raise NotImplementedError

    def response_splice_target(self) -> asyncio.Transport | None:
        raise NotImplementedError

    def response_spliced(self, size: int) -> None:
        raise NotImplementedError

    def response_splice_blocked(self, blocked: bool) -> None:
        raise NotImplementedError

    def switch_protocols(self, exchange: Exchange, reason: bytes, headers: Fields, via: bytes | None,
                         protocol: bytes, backend: asyncio.Transport, rest: bytes,
                         pipes: PipePool | None) -> None:
        raise NotImplementedError

    def close(self, force: bool = False) -> None:
        raise NotImplementedError
