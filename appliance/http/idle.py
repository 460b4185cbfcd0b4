"""Idle keep-alive client connections, compacted: what a connection keeps between requests.

A keep-alive connection that has been idle for a short spell (the worker's `compact_after`,
two timer-wheel ticks; a sweep runs that often, `IdleClients.sweep_every`) hands its
transport to an IdleClient and lets its ClientConnection go (appliance/http/downstream.py,
`compact_idle`): the transport, the listener's shared facts, the peer's, the TLS
session's, and the keep-alive deadline, about 100 bytes instead of the
ClientConnection's 264 and its entries in the wheel and in `ctx.clients` (issue 15: idle
RSS per connection). nginx does the same: ngx_http_set_keepalive frees a keep-alive
connection's request state and keeps a small connection struct. The first bytes the client
sends wake it: a ClientConnection is made again (`ClientListener.wake`) and reads them.
Busy keep-alive connections (the next request within the spell) never compact, so the
request path pays nothing for this.

The worker's idle connections wait in one IdleClients queue, in the order they went idle,
which is also the order their keep-alive deadlines pass (the timeout is one value per
worker): the queue is their registry (the drain closes them through it) and their timer,
one entry in the worker's timer wheel armed for its head's deadline. No set member, no wheel
entry and no float object per idle connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from appliance.timerwheel import BATCH, UNFILED, TimerWheel

if TYPE_CHECKING:
    from appliance.http.peer import PeerFacts
    from appliance.tls.session import TlsConnection


class Listener(Protocol):
    """What an IdleClient needs of its listener: appliance/http/downstream.py's ClientListener
    (named by the interface, not imported: the client side and the worker context import this
    module)."""

    ctx: Any  # the WorkerContext: its `idle` queue

    def wake(self, idle: IdleClient) -> Any:
        """The ClientConnection that takes the transport back from `idle`."""


class IdleClient:  # uvloop calls protocol methods by name: no asyncio.Protocol base
    """The protocol of a compacted idle keep-alive connection: only what it needs to come back."""

    __slots__ = ("deadline", "facts", "listener", "next", "port", "prev", "tls", "transport")

    def __init__(self, listener: Listener, transport: asyncio.Transport, facts: PeerFacts, port: int,
                 tls: TlsConnection | None, deadline: float) -> None:
        self.listener = listener  # ctx, proto, TLS site and h2 settings, shared by the listener's connections
        self.transport = transport
        # (address bytes, trusted proxy, X-Forwarded-For tail), shared per address (appliance/http/peer.py);
        # a TLS connection's own X-SSL-* lines are in `tls`.
        self.facts = facts
        self.port = port
        self.tls = tls
        self.deadline = deadline  # loop time the keep-alive timeout passes
        self.prev: IdleClient | None = None  # the IdleClients queue's links
        self.next: IdleClient | None = None

    def data_received(self, data: bytes) -> None:
        self.wake().data_received(data)

    def eof_received(self) -> bool:
        # The client closed an idle connection: nothing to answer, nothing to linger for (as an
        # idle ClientConnection that got FIN: its close() closes at once).
        self.listener.ctx.idle.remove(self)
        self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.ctx.idle.remove(self)

    def wake(self) -> Any:
        """Leave the queue and become a ClientConnection again, which takes the transport over."""
        self.listener.ctx.idle.remove(self)
        return self.listener.wake(self)

    def close(self, force: bool) -> None:
        """The keep-alive timeout passed or the worker drains: close as an idle ClientConnection
        does (a lingering close), or at once with `force`."""
        if force:
            self.listener.ctx.idle.remove(self)
            self.transport.abort()
        else:
            self.wake().close()


class IdleClients:
    """The worker's compacted idle connections, oldest first: their registry and their timer."""

    __slots__ = ("_loop", "_sweep", "_wheel", "count", "head", "slot", "tail", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, wheel: TimerWheel) -> None:
        self._loop = loop
        self._wheel = wheel
        self.head: IdleClient | None = None
        self.tail: IdleClient | None = None
        self.count = 0
        # The queue's own entry in the timer wheel (appliance/timerwheel.py), for its head.
        self.when: float | None = None
        self.slot = UNFILED
        self._sweep: Callable[[], None] | None = None

    def sweep_every(self, every: float, compact: Callable[[], None]) -> None:
        """Call `compact` every `every` seconds from now on, to compact the connections idle that
        long (once per worker: the first listener starts it). A sweep, not a deadline per idle
        connection: a busy keep-alive connection then files its keep-alive timeout as it did
        before compaction existed, and pays nothing for it."""
        if self._sweep is not None:
            return

        def sweep() -> None:
            compact()
            self._loop.call_later(every, sweep)

        self._sweep = sweep
        self._loop.call_later(every, sweep)

    def __len__(self) -> int:
        return self.count

    def push(self, client: IdleClient) -> None:
        """Queue a client that just went idle (its deadline is the latest of all)."""
        tail = self.tail
        client.prev = tail
        if tail is None:
            self.head = client
            self._wheel.set(self, client.deadline - self._loop.time())
        else:
            tail.next = client
        self.tail = client
        self.count += 1

    def remove(self, client: IdleClient) -> None:
        """Take a client out of the queue (nothing if it is not in it). The wheel entry stays
        armed for a head that may have left: when it fires it finds the new head's deadline."""
        prev, following = client.prev, client.next
        if prev is not None:
            prev.next = following
        elif self.head is client:
            self.head = following
        else:
            return
        if following is not None:
            following.prev = prev
        else:
            self.tail = prev
        client.prev = client.next = None
        self.count -= 1

    def on_expiry(self) -> None:
        """The head's deadline passed (called by the timer wheel): close the expired clients,
        at most BATCH per loop turn, as the wheel does, so the loop polls between batches."""
        now = self._loop.time()
        closed = 0
        head = self.head
        while head is not None and head.deadline <= now:
            if closed == BATCH:
                self._loop.call_soon(self.on_expiry)
                return
            head.close(False)
            closed += 1
            head = self.head
        if head is not None:
            self._wheel.set(self, head.deadline - now)

    def close_all(self, force: bool) -> None:
        """Close every idle client (the worker drains or stops)."""
        while self.head is not None:
            self.head.close(force)
