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

A plain (non-TLS) compacted connection also leaves uvloop, as nginx keeps an idle keep-alive
connection as only its fd in epoll and a small struct: its socket, duplicated, is watched by
the worker's one idle epoll set (itself one reader in the loop) and its uvloop transport and
libuv handle, about 1.1 KiB, are closed (`IdleClients.detach`; closing a duplicated fd
neither ends nor resets the connection). When the socket becomes readable (the next request,
or the client's FIN or reset) it is handed back to uvloop (`loop.connect_accepted_socket`, one
task per wake) and the IdleClient, as the new transport's protocol, wakes with it. A TLS
connection keeps its transport: its session state lives in uvloop's SSLProtocol.

The worker's idle connections wait in one IdleClients queue, in the order they went idle,
which is also the order their keep-alive deadlines pass (the timeout is one value per
worker): the queue is their registry (the drain closes them through it) and their timer,
one entry in the worker's timer wheel armed for its head's deadline. No set member, no wheel
entry and no float object per idle connection.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
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

    __slots__ = ("deadline", "facts", "fd", "listener", "next", "port", "prev", "tls", "transport")

    def __init__(self, listener: Listener, transport: asyncio.Transport, facts: PeerFacts, port: int,
                 tls: TlsConnection | None, deadline: float) -> None:
        self.listener = listener  # ctx, proto, TLS site and h2 settings, shared by the listener's connections
        self.transport: asyncio.Transport | None = transport  # None while detached or waking
        self.fd = -1  # the socket's fd while detached from uvloop (IdleClients.detach)
        # (address bytes, trusted proxy, X-Forwarded-For tail), shared per address (appliance/http/peer.py);
        # a TLS connection's own X-SSL-* lines are in `tls`.
        self.facts = facts
        self.port = port
        self.tls = tls
        self.deadline = deadline  # loop time the keep-alive timeout passes
        self.prev: IdleClient | None = None  # the IdleClients queue's links
        self.next: IdleClient | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        """A detached connection's socket is a uvloop transport again (IdleClients._on_ready):
        it wakes, and the transport reads what the kernel kept."""
        self.transport = transport
        self.listener.ctx.idle.waking -= 1
        self.listener.wake(self)

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
        does (a lingering close), or at once with `force`. A detached one has nothing unread
        (its socket would have woken it): a plain close, as nginx closes an idle keep-alive
        connection."""
        if self.transport is None:
            self.listener.ctx.idle.close_detached(self)
        elif force:
            self.listener.ctx.idle.remove(self)
            self.transport.abort()
        else:
            self.wake().close()


class _Detached:
    """The protocol of a transport whose socket went on as a detached IdleClient's: its
    connection_lost (the transport closing) is not the client's."""

    __slots__ = ()

    def connection_lost(self, exc: Exception | None) -> None:
        pass


_GONE = _Detached()


class IdleClients:
    """The worker's compacted idle connections, oldest first: their registry and their timer."""

    __slots__ = ("_epoll", "_fds", "_loop", "_sweep", "_wheel", "count", "head", "slot", "tail", "waking",
                 "when")

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
        # The detached clients' sockets: one epoll set, its fd one reader in the loop, and the
        # clients by fd (a list: 8 bytes a slot, fds are dense).
        self._epoll = select.epoll()
        loop.add_reader(self._epoll.fileno(), self._on_ready)
        self._fds: list[IdleClient | None] = []
        # Detached clients whose socket is on its way back to uvloop: out of the queue but
        # still open and idle (the gauges and the drain count them).
        self.waking = 0

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
        return self.count + self.waking

    def detach(self, client: IdleClient) -> None:
        """Take a plain client's socket away from uvloop: watch a duplicate of its fd in the
        idle epoll set and close its transport (no FIN, no reset: the duplicate keeps the
        connection open; uvloop only shuts a socket down on write_eof). Out of fds, the
        client keeps its transport, as a TLS one does."""
        transport = client.transport
        try:
            fd = os.dup(transport.get_extra_info("socket").fileno())
        except OSError:  # EMFILE: the process's fd limit (the duplicate needs one for a moment)
            return
        transport.set_protocol(_GONE)  # its connection_lost is not the client leaving
        transport.close()
        client.transport = None
        client.fd = fd
        fds = self._fds
        if fd >= len(fds):
            fds.extend([None] * (fd + 1 - len(fds)))
        fds[fd] = client
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)

    def _unwatch(self, client: IdleClient) -> int:
        fd = client.fd
        self._epoll.unregister(fd)
        self._fds[fd] = None
        client.fd = -1
        return fd

    def close_detached(self, client: IdleClient) -> None:
        """Close a detached client's socket (keep-alive timeout, drain)."""
        self.remove(client)
        os.close(self._unwatch(client))

    def _on_ready(self) -> None:
        """Detached sockets became readable (a request, FIN or reset): each goes back to uvloop,
        its IdleClient the new transport's protocol (connection_made wakes it). At most BATCH
        per loop turn (level-triggered: the rest come on the next)."""
        fds = self._fds
        for fd, _ in self._epoll.poll(0, BATCH):
            client = fds[fd]
            self.remove(client)
            self._unwatch(client)
            self.waking += 1
            self._reattach(client, socket.socket(fileno=fd))

    def _reattach(self, client: IdleClient, sock: socket.socket) -> None:
        # A method of its own so that each factory binds its own client (a lambda in
        # _on_ready's loop would see the loop's last one).
        self._loop.create_task(self._loop.connect_accepted_socket(lambda: client, sock))

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
