"""An upgrade tunnel: after a backend's 101, bytes relayed both ways until both sides are done.

A Tunnel owns both transports (the client's and the backend's): each gets a TunnelEnd as
its protocol, which relays what that transport reads to the other one. Where both sides
are plaintext, each direction moves through splice(2) (appliance/upstream/splice.py) once
the destination has nothing buffered: the bytes never enter the proxy. Otherwise (TLS on
either side) bytes are copied, with the usual flow control: a destination above its
write high-watermark pauses reading from the source until it drains.

A FIN from one side is passed on as a FIN to the other (half-close); the tunnel closes
when both directions have ended, when either side closes or fails, after
`tunnel_idle_timeout` without a byte either way, or, in a draining worker, at
`tunnel_drain_timeout`. Nothing of the HTTP layer is left once the tunnel runs: the
client connection and the backend connection handed their transports over and left
their pools and sets (the backend connection never returns to its pool).

Not compiled (appliance/_build_modules.txt): its work is per tunnel and per read, not per
request, and spliced bytes never reach Python at all; both builds run this file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from appliance.deadline import Deadline
from appliance.statemachine import Transitions
from appliance.upstream.splice import SPLICE_SOURCE_CLOSED, BodySplice, PipePool

# Why a tunnel closed (the label of rproxyd_tunnels_closed_total).
CLOSE_REASONS = ("client_closed", "backend_closed", "idle_timeout", "drain_timeout", "stopped", "error")
CLIENT_CLOSED, BACKEND_CLOSED, IDLE_TIMEOUT, DRAIN_TIMEOUT, STOPPED, ERROR = range(len(CLOSE_REASONS))

_FOREVER = 1 << 62  # a tunnel's splice has no length: it runs until its source ends


class TunnelState(IntEnum):
    OPEN = 1  # bytes flow both ways
    HALF_CLOSED = 2  # one side sent FIN (passed on); the other direction still flows
    CLOSED = 3


OPEN, HALF_CLOSED, CLOSED = TunnelState
_MOVES = Transitions("tunnel", {
    OPEN: (HALF_CLOSED, CLOSED),
    HALF_CLOSED: (CLOSED,),
})


class TunnelEnd:
    """The protocol of one side's transport: relays what it reads to the other end's transport.

    Also the SpliceOwner of the direction from this side to the other while it is spliced.
    """

    __slots__ = ("closed_reason", "other", "read", "reading_done", "splice", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, closed_reason: int) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.other: TunnelEnd = self  # set once both ends exist
        self.read = 0  # bytes read from this side (and given to the other)
        self.reading_done = False  # this side sent FIN
        self.splice: BodySplice | None = None
        self.closed_reason = closed_reason  # what it is when this side ends the tunnel

    # ------------------------------------------------------ asyncio protocol
    def data_received(self, data: bytes) -> None:
        self.read += len(data)
        tunnel = self.tunnel
        tunnel.deadline.set(tunnel.idle_timeout)
        destination = self.other.transport
        destination.write(data)
        if tunnel.pipes is not None and not destination.get_write_buffer_size():
            self.start_splice()

    def eof_received(self) -> bool:
        self.tunnel.read_ended(self)
        # Keep the transport open for the other direction. TLS has no half-close: its transport
        # closes whatever we return (and warns on True).
        return self.tunnel.state is not CLOSED and self.transport.can_write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close(self.closed_reason if exc is None else ERROR)

    def pause_writing(self) -> None:
        """This side does not take bytes as fast as the other sends: stop reading the other."""
        other = self.other
        if other.splice is None and not other.reading_done:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other.splice is None and not other.reading_done and self.tunnel.state is not CLOSED:
            other.transport.resume_reading()

    # ------------------------------------------------------------ splice
    def start_splice(self) -> None:
        """Move this direction to splice(2): the source transport stops reading, the pipe moves bytes."""
        self.transport.pause_reading()
        self.splice = BodySplice(self.tunnel.loop, self.tunnel.pipes, self.transport, self.other.transport,
                                 _FOREVER, self)

    def splice_read(self, size: int) -> None:
        self.read += size
        self.tunnel.deadline.set(self.tunnel.idle_timeout)

    def splice_written(self, size: int) -> None:
        """Counted when read (splice_read)."""

    def splice_waiting(self, for_destination: bool) -> None:
        """The idle timeout covers a destination that stops reading: nothing to switch."""

    def splice_ended(self, outcome: int) -> None:
        self.splice = None
        if outcome == SPLICE_SOURCE_CLOSED:
            self.tunnel.read_ended(self)  # a FIN (or a reset, which the other direction sees too)
        else:
            self.tunnel.close(ERROR)  # the destination refused the bytes

    def stop(self) -> None:
        splice = self.splice
        if splice is not None:
            self.splice = None
            splice.cancel()


class Tunnel:
    """Both transports after a 101, relaying until both directions end or the tunnel is cut."""

    __slots__ = ("backend", "client", "deadline", "drain_deadline", "exchange", "idle_timeout", "loop",
                 "on_closed", "pipes", "reason", "registry", "route", "started", "state")

    def __init__(self, registry: TunnelRegistry, exchange: Any, client: asyncio.Transport,
                 backend: asyncio.Transport, pipes: PipePool | None, idle_timeout: float,
                 on_closed: Callable[[Tunnel], None]) -> None:
        loop = registry.loop
        self.loop = loop
        self.registry = registry
        self.exchange = exchange
        self.route = exchange.route
        self.pipes = pipes  # None: copy both ways (TLS on a side, or splice turned off)
        self.idle_timeout = idle_timeout
        self.on_closed = on_closed
        self.state = OPEN
        self.reason = -1
        self.started = loop.time()
        self.client = TunnelEnd(self, client, CLIENT_CLOSED)
        self.backend = TunnelEnd(self, backend, BACKEND_CLOSED)
        self.client.other = self.backend
        self.backend.other = self.client
        self.deadline = Deadline(loop, self._on_idle)
        self.drain_deadline: Deadline | None = None
        registry.add(self)

    def start(self, to_backend: bytes, to_client: bytes) -> None:
        """Take over both transports; first send what each side sent after its head."""
        client, backend = self.client, self.backend
        client.transport.set_protocol(client)
        backend.transport.set_protocol(backend)
        self.deadline.set(self.idle_timeout)
        if to_client:
            client.transport.write(to_client)
        if to_backend:
            client.read += len(to_backend)
            backend.transport.write(to_backend)
        for end in (client, backend):
            if self.pipes is not None and not end.other.transport.get_write_buffer_size():
                end.start_splice()
            else:
                end.transport.resume_reading()
        if self.registry.draining:
            self.drain(self.registry.drain_timeout)

    def read_ended(self, end: TunnelEnd) -> None:
        """`end`'s side sent FIN: pass it on; close once both sides have."""
        if self.state is CLOSED or end.reading_done:
            return
        end.reading_done = True
        destination = end.other.transport
        if end.other.reading_done or not destination.can_write_eof():
            self.close(end.closed_reason)  # both done, or TLS, which has no half-close
            return
        if self.reason < 0:
            self.reason = end.closed_reason  # who closed first
        self._transition(HALF_CLOSED)
        destination.write_eof()

    def drain(self, timeout: float) -> None:
        """The worker drains: close this tunnel `timeout` seconds from now."""
        if self.drain_deadline is None and self.state is not CLOSED:
            self.drain_deadline = Deadline(self.loop, self._on_drain_timeout)
            self.drain_deadline.set(timeout)

    def _on_idle(self) -> None:
        self.close(IDLE_TIMEOUT)

    def _on_drain_timeout(self) -> None:
        self.close(DRAIN_TIMEOUT)

    def _transition(self, new: TunnelState) -> None:
        self.state = _MOVES.check(self.state, new)

    def close(self, reason: int) -> None:
        """End the tunnel: both transports close once their queued bytes are out (abort on error)."""
        if self.state is CLOSED:
            return
        self._transition(CLOSED)
        if self.reason < 0 or reason in (IDLE_TIMEOUT, DRAIN_TIMEOUT, STOPPED, ERROR):
            self.reason = reason
        self.client.stop()
        self.backend.stop()
        self.deadline.release()
        if self.drain_deadline is not None:
            self.drain_deadline.release()
        for end in (self.client, self.backend):
            if reason == ERROR:
                end.transport.abort()
            else:
                end.transport.close()
        self.registry.remove(self)
        self.on_closed(self)


class TunnelRegistry:
    """A worker's open tunnels: the per-rule limit, the drain, and the gauge."""

    __slots__ = ("drain_timeout", "draining", "loop", "open", "per_route")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.open: set[Tunnel] = set()
        self.per_route: dict[Any, int] = {}  # route → its open tunnels
        self.draining = False
        self.drain_timeout = 0.0

    def full(self, route: Any) -> bool:
        """Whether `route` holds its max_tunnels already (checked when a handshake arrives)."""
        return 0 < route.max_tunnels <= self.per_route.get(route, 0)

    def add(self, tunnel: Tunnel) -> None:
        self.open.add(tunnel)
        self.per_route[tunnel.route] = self.per_route.get(tunnel.route, 0) + 1

    def remove(self, tunnel: Tunnel) -> None:
        self.open.discard(tunnel)
        self.per_route[tunnel.route] -= 1

    def drain(self, timeout: float) -> None:
        """Give every open tunnel (and any that opens from now) `timeout` seconds more."""
        self.draining = True
        self.drain_timeout = timeout
        for tunnel in list(self.open):
            tunnel.drain(timeout)

    def close_all(self) -> None:
        """The worker stops now: close every tunnel."""
        for tunnel in list(self.open):
            tunnel.close(STOPPED)
