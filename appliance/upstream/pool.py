"""Per-worker backend pools: servers, their persistent connections, the pending queue.

A BackendPool serves one [backend.NAME]. Each of its Servers keeps up to
`connections` keep-alive connections, opened on demand and kept open (RProxy's
persistent connections). A request takes an IDLE connection, round-robin over
the servers that have one; otherwise it waits in the backend's FIFO pending
queue, which is served whenever any connection turns IDLE. Only the oldest
pending request needs a timer, because the queue is in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from appliance.config.schema import BackendConfig, LimitsConfig
from appliance.config.values import Address
from appliance.http import errors
from appliance.http.exchange import ExchangeState
from appliance.upstream.connection import BackendConnection, ConnState

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange

log = logging.getLogger("rproxyd.pool")

# Retries of a request whose reused connection the backend had closed unnoticed.
MAX_STALE_RETRIES = 2


class Server:
    """One origin server as seen by one worker: its connections and reconnect back-off."""

    __slots__ = ("address", "config", "connecting", "failures", "idle", "live", "pool", "retry_at")

    def __init__(self, pool: BackendPool, address: Address, config: BackendConfig) -> None:
        self.pool = pool
        self.address = address
        self.config = config
        self.idle: list[BackendConnection] = []  # a stack: the warmest connection is reused
        self.live = 0  # CONNECTING + IDLE + ACTIVE connections
        self.connecting = 0
        self.failures = 0  # consecutive failed connects
        self.retry_at = 0.0  # no connect attempt before this loop time

    def can_connect(self, now: float) -> bool:
        return self.live < self.config.connections and now >= self.retry_at

    def connect(self) -> None:
        self.live += 1
        self.connecting += 1
        self.pool.loop.create_task(self._connect(BackendConnection(self)))

    async def _connect(self, conn: BackendConnection) -> None:
        loop = self.pool.loop
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, self.address.host, self.address.port),
                self.config.connect_timeout,
            )
        except TimeoutError:
            self._connect_failed(conn, errors.BackendTimeout(f"connect to {self.address} timed out"))
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            self._connect_failed(conn, errors.BackendRefused(f"connect to {self.address}: {reason}"))
        else:
            conn.connected()

    def _connect_failed(self, conn: BackendConnection, failure: errors.ProxyFailure) -> None:
        if conn.state is ConnState.CONNECTING:
            conn.state = ConnState.DOWN  # never connected: no transport, no callbacks to come
        self.live -= 1
        self.connecting -= 1
        self.failures += 1
        delay = min(self.config.retry_delay * 2 ** (self.failures - 1), self.config.retry_delay_max)
        self.retry_at = self.pool.loop.time() + delay
        log.warning("%s (retry in %.1fs)", failure, delay)
        self.pool.on_connect_failed(self, failure)

    def on_connected(self, conn: BackendConnection) -> None:
        self.connecting -= 1
        self.failures = 0
        self.retry_at = 0.0
        self.pool.on_idle(conn)

    def release(self, conn: BackendConnection) -> None:
        self.pool.on_idle(conn)

    def on_closed(self, conn: BackendConnection, previous: ConnState) -> None:
        self.live -= 1
        if previous is ConnState.CONNECTING:
            self.connecting -= 1
        elif previous is ConnState.IDLE:
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)
        # A closed slot reopens on demand, and only pending requests create demand.
        self.pool.grow()


class BackendPool:
    """One backend's servers and pending queue, inside one worker."""

    __slots__ = (
        "_next",
        "_pending_timer",
        "limits",
        "loop",
        "name",
        "pending",
        "servers",
        "via",
    )

    def __init__(self, name: str, config: BackendConfig, limits: LimitsConfig,
                 loop: asyncio.AbstractEventLoop, via: bytes) -> None:
        self.name = name
        self.loop = loop
        self.limits = limits
        self.via = via
        self.servers = [Server(self, address, config) for address in config.servers]
        self.pending: deque[Exchange] = deque()
        self._pending_timer: asyncio.TimerHandle | None = None
        self._next = 0

    def warm_up(self) -> None:
        """Open one connection per server so the first request finds one ready."""
        for server in self.servers:
            server.connect()

    # ------------------------------------------------------------- acquire
    def acquire(self, exchange: Exchange) -> None:
        """Attach the exchange to an IDLE connection, or queue it, or refuse it (503)."""
        conn = self._take_idle()
        if conn is not None:
            conn.attach(exchange)
            return
        if len(self.pending) >= self.limits.max_pending:
            exchange.client.fail(exchange, errors.BackendUnavailable("pending queue full"))
            return
        now = self.loop.time()
        if not any(s.live or s.can_connect(now) for s in self.servers):
            exchange.client.fail(exchange, errors.BackendUnavailable("every server is down"))
            return
        exchange.transition(ExchangeState.PENDING)
        exchange.pending_since = now
        self.pending.append(exchange)
        if self._pending_timer is None:
            self._arm_pending_timer()
        self.grow()

    def _take_idle(self) -> BackendConnection | None:
        servers = self.servers
        count = len(servers)
        start = self._next
        for offset in range(count):
            server = servers[(start + offset) % count]
            if server.idle:
                self._next = (start + offset + 1) % count
                return server.idle.pop()
        return None

    def grow(self) -> None:
        """Open connections while pending requests outnumber connections being opened."""
        if not self.pending:
            return
        now = self.loop.time()
        servers = self.servers
        count = len(servers)
        while sum(s.connecting for s in servers) < len(self.pending):
            for offset in range(count):
                server = servers[(self._next + offset) % count]
                if server.can_connect(now):
                    self._next = (self._next + offset + 1) % count
                    server.connect()
                    break
            else:
                self._schedule_grow(now)
                return

    def _schedule_grow(self, now: float) -> None:
        waits = [s.retry_at for s in self.servers if s.live < s.config.connections]
        if waits and min(waits) > now:
            self.loop.call_at(min(waits), self.grow)

    def on_idle(self, conn: BackendConnection) -> None:
        """A connection turned IDLE: it serves the oldest pending request, if any."""
        pending = self.pending
        while pending:
            exchange = pending.popleft()
            if exchange.state is ExchangeState.PENDING:
                conn.attach(exchange)
                return
        conn.server.idle.append(conn)

    def on_connect_failed(self, server: Server, failure: errors.ProxyFailure) -> None:
        self.grow()
        if any(s.live for s in self.servers):
            return  # other connections may still serve the queue
        # Nothing is open or opening: the queue would only wait for its timeout.
        while self.pending:
            exchange = self.pending.popleft()
            if exchange.state is ExchangeState.PENDING:
                exchange.client.fail(exchange, failure)

    def retry(self, exchange: Exchange) -> None:
        """Send again a request whose reused connection died before any answer."""
        exchange.retries += 1
        exchange.transition(ExchangeState.PENDING)
        conn = self._take_idle()
        if conn is not None:
            conn.attach(exchange)
            return
        exchange.pending_since = self.loop.time()
        self.pending.appendleft(exchange)
        if self._pending_timer is None:
            self._arm_pending_timer()
        self.grow()

    def cancel_pending(self, exchange: Exchange) -> None:
        with contextlib.suppress(ValueError):
            self.pending.remove(exchange)

    # ------------------------------------------------------- pending timeout
    def _arm_pending_timer(self) -> None:
        oldest = self.pending[0].pending_since
        self._pending_timer = self.loop.call_at(
            oldest + self.limits.pending_timeout, self._on_pending_timer
        )

    def _on_pending_timer(self) -> None:
        self._pending_timer = None
        pending = self.pending
        expire_before = self.loop.time() - self.limits.pending_timeout
        while pending and (
            pending[0].state is not ExchangeState.PENDING or pending[0].pending_since <= expire_before
        ):
            exchange = pending.popleft()
            if exchange.state is ExchangeState.PENDING:
                exchange.client.fail(exchange, errors.BackendUnavailable("pending timeout"))
        if pending:
            self._arm_pending_timer()

    # -------------------------------------------------------------- request head
    def request_head(self, exchange: Exchange) -> bytes:
        """Re-serialize the request head for the backend (never the client's raw bytes)."""
        client = exchange.client
        lines = [exchange.method + b" " + exchange.url + b" HTTP/1.1\r\n"]
        for name, value in exchange.headers:
            lines.append(name + b": " + value + b"\r\n")
        if exchange.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        forwarded = exchange.forwarded_for
        lines.append(
            b"X-Forwarded-For: " + (forwarded + b", " if forwarded else b"") + client.peer_ip + b"\r\n"
        )
        lines.append(b"X-Forwarded-Proto: " + client.proto + b"\r\n")
        if exchange.host is not None:
            lines.append(b"X-Forwarded-Host: " + exchange.host + b"\r\n")
        if self.via:
            prior = exchange.via + b", " if exchange.via else b""
            lines.append(b"Via: %s%s %s\r\n" % (prior, exchange.version.encode(), self.via))
        lines.append(b"\r\n")
        return b"".join(lines)
