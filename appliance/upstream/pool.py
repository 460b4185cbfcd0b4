"""Per-worker backend pools: servers, their persistent connections, the pending queues.

A BackendPool serves one [backend.NAME]. Each of its Servers keeps up to
`connections` keep-alive connections, opened on demand and kept open (RProxy's
persistent connections). For each request the route's balancer picks a healthy
server; the request takes one of its IDLE connections, or waits:
- in the backend's queue, served by whichever connection turns IDLE first, when
  the balancer is free to use any server (round-robin, least-conn, …);
- in the chosen server's own queue when the balancer is sticky (hash).
Queues are FIFO, so only the oldest entry of each needs a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.config.schema import BackendConfig, LimitsConfig
from appliance.config.values import ServerSpec
from appliance.http import errors
from appliance.http.exchange import PENDING
from appliance.http.request_head import RequestHead
from appliance.observe.errorlog import about
from appliance.timerwheel import BATCH
from appliance.tls.contexts import backend_peer
from appliance.upstream.balance import Balancer, make_balancer
from appliance.upstream.connection import BackendConnection, ConnState
from appliance.upstream.health import ActiveProbe, PassiveHealth
from appliance.upstream.proxy_head import ProxiedHead
from appliance.upstream.splice import PipePool

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange

log = logging.getLogger("rproxyd.pool")

# Retries of a request whose reused connection the backend had closed unnoticed.
# Not a server failure, so it uses neither the retry count nor the budget.
MAX_STALE_RETRIES = 2
RETRY_BUDGET_FLOOR = 10.0
RTT_SMOOTHING = 0.3


class PendingQueue:
    """Requests waiting for a connection, oldest first, with one timer for the oldest."""

    __slots__ = ("_loop", "_on_expired", "_timeout", "_timer", "entries")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float,
                 on_expired: Callable[[Exchange], None]) -> None:
        self._loop = loop
        self._timeout = timeout
        self._on_expired = on_expired
        self._timer: asyncio.Handle | None = None  # call_at for the oldest, call_soon for a backlog
        self.entries: deque[Exchange] = deque()

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, exchange: Exchange, front: bool = False) -> None:
        exchange.pending_since = self._loop.time()
        if front:
            self.entries.appendleft(exchange)
        else:
            self.entries.append(exchange)
        if self._timer is None:
            self._arm()

    def pop(self) -> Exchange | None:
        """The oldest request still waiting, or None."""
        entries = self.entries
        while entries:
            exchange = entries.popleft()
            if exchange.state is PENDING:
                return exchange
        return None

    def remove(self, exchange: Exchange) -> None:
        with contextlib.suppress(ValueError):
            self.entries.remove(exchange)

    def drain(self) -> list[Exchange]:
        waiting = [e for e in self.entries if e.state is PENDING]
        self.entries.clear()
        return waiting

    def _arm(self) -> None:
        oldest = min(exchange.pending_since for exchange in self.entries)
        self._timer = self._loop.call_at(oldest + self._timeout, self._expire)

    def _expire(self) -> None:
        """Answer the requests that waited too long, at most BATCH per loop turn.

        A backend that hangs lets its whole queue expire together; answering them all in
        one callback would stall every other connection of the worker (as client timeouts
        did before the timer wheel), so the rest wait for the next turn.
        """
        self._timer = None
        entries = self.entries
        expire_before = self._loop.time() - self._timeout
        due = [e for e in entries if e.pending_since <= expire_before]
        for exchange in due[:BATCH]:
            entries.remove(exchange)
            if exchange.state is PENDING:
                self._on_expired(exchange)
        if len(due) > BATCH:
            self._timer = self._loop.call_soon(self._expire)
        elif entries:
            self._arm()


class Server:
    """One origin server as seen by one worker: connections, health, latency."""

    __slots__ = (
        "active",
        "address",
        "config",
        "connect_failures",
        "connecting",
        "host_line",
        "idle",
        "live",
        "passive",
        "pending",
        "pool",
        "probe",
        "retry_at",
        "rtt",
        "single_use",
        "tls",
        "tls_name",
        "weight",
    )

    def __init__(self, pool: BackendPool, spec: ServerSpec, config: BackendConfig) -> None:
        self.pool = pool
        self.address = spec.address
        # Host for a request that came without one (HTTP/1.0): the head we send is HTTP/1.1,
        # which requires it (nginx sends its upstream's name the same way).
        self.host_line = b"Host: " + str(spec.address).encode() + b"\r\n"
        # TLS to this server (None: plain TCP). A Server is one (address, TLS peer settings):
        # its pooled connections all share them.
        self.tls, self.tls_name = backend_peer(config, spec.address.host)
        self.weight = spec.weight
        self.config = config
        # A connection whose PROXY header names one client serves that client's request only.
        self.single_use = config.proxy_protocol != "off"
        self.idle: list[BackendConnection] = []  # a stack: the warmest connection is reused
        self.live = 0  # CONNECTING + IDLE + ACTIVE connections
        self.connecting = 0
        self.active = 0  # ACTIVE connections (maintained by BackendConnection._transition)
        self.connect_failures = 0  # consecutive, for the reconnect back-off
        self.retry_at = 0.0  # no connect attempt before this loop time
        self.rtt = 0.0  # smoothed seconds to response head; 0 until measured
        self.passive = PassiveHealth(config)
        self.probe: ActiveProbe | None = None
        self.pending = PendingQueue(pool.loop, pool.limits.pending_timeout, pool.on_pending_expired)

    def healthy(self, now: float) -> bool:
        return now >= self.passive.down_until and (self.probe is None or self.probe.up)

    def can_connect(self, now: float) -> bool:
        if self.live >= self.config.connections or now < self.retry_at:
            return False
        # An h2 connection being opened will carry many of the queued requests: open the next
        # one only when it is up and full (pool.on_idle takes them off the queue).
        return not (self.connecting and self.config.protocol == "h2")

    def usable(self, now: float) -> bool:
        """Healthy, and something is open or can be opened now."""
        return self.healthy(now) and (self.live > 0 or self.can_connect(now))

    def connect(self) -> None:
        self.live += 1
        self.connecting += 1
        if self.config.protocol == "h2":
            # Imported here: the binding is loaded by workers whose backends speak h2 only.
            from appliance.upstream.h2_connection import H2BackendConnection
            conn = H2BackendConnection(self)
        else:
            conn = BackendConnection(self)
        self.pool.loop.create_task(self._connect(conn))

    async def _connect(self, conn: BackendConnection) -> None:
        loop = self.pool.loop
        started = loop.time()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, self.address.host, self.address.port,
                                       ssl=self.tls, server_hostname=self.tls_name),
                self.config.connect_timeout,
            )
        except TimeoutError:
            self._connect_failed(conn, errors.BackendTimeout(f"connect to {self.address} timed out"))
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            self._connect_failed(conn, errors.BackendRefused(f"connect to {self.address}: {reason}"))
        else:
            conn.connect_time = loop.time() - started
            conn.connected()

    def _connect_failed(self, conn: BackendConnection, failure: errors.ProxyFailure) -> None:
        conn.connect_failed()
        self.live -= 1
        self.connecting -= 1
        self.connect_failures += 1
        config = self.config
        delay = min(config.retry_delay * 2 ** (self.connect_failures - 1), config.retry_delay_max)
        now = self.pool.loop.time()
        self.retry_at = now + delay
        log.warning("%s (retry in %.1fs)", failure, delay)
        self.note_failure(now)
        self.pool.on_connect_failed(self, failure)

    def note_failure(self, now: float) -> None:
        """A passive-health failure: a failed connect, a timeout or a bad response.

        max_fails of them take the server out of rotation, unless it is the backend's last
        usable server: then a 503 for every request would only add an outage to the errors.
        """
        config = self.config
        if not self.passive.failure(now):
            return
        if not any(server is not self and server.usable(now) for server in self.pool.servers):
            log.warning("server %s: %d failures within %.1fs, kept in rotation: it is the last usable "
                        "server of backend %s", self.address, config.max_fails, config.fail_window,
                        self.pool.name)
            return
        self.passive.mark_down(now)
        log.warning("server %s is DOWN for %.1fs (%d failures within %.1fs)", self.address,
                    config.down_time, config.max_fails, config.fail_window)
        self.pool.rebalance(self)
        self.pool.loop.call_at(self.passive.down_until, self.pool.grow)

    def note_rtt(self, seconds: float) -> None:
        self.rtt = seconds if not self.rtt else self.rtt + RTT_SMOOTHING * (seconds - self.rtt)

    def on_connected(self, conn: BackendConnection) -> None:
        self.connecting -= 1
        self.connect_failures = 0
        self.retry_at = 0.0
        self.pool.on_idle(conn)

    def release(self, conn: BackendConnection) -> None:
        if self.single_use:
            conn.close()  # its PROXY header named the client it served (appliance/upstream/proxy_head.py)
            return
        self.pool.on_idle(conn)

    def take_idle(self) -> BackendConnection | None:
        """The warmest IDLE connection the backend has not closed, or None.

        The stale ones found on the way are closed (they reopen on demand).
        """
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.peer_closed():
                return conn
        return None

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
    """One backend's servers and pending queues, inside one worker."""

    __slots__ = (
        "_budget",
        "_budget_step",
        "config",
        "default_balancer",
        "limits",
        "loop",
        "name",
        "pending",
        "pending_timeouts",
        "pipes",
        "redirect_status",
        "request_head",
        "retry_statuses",
        "servers",
    )

    def __init__(self, name: str, config: BackendConfig, limits: LimitsConfig,
                 loop: asyncio.AbstractEventLoop, via: bytes, redirect_status: int = 377,
                 splice_min_bytes: int = 0) -> None:
        self.name = name
        # Pipes for zero-copy response bodies (appliance/upstream/splice.py); None: off.
        self.pipes = PipePool(splice_min_bytes) if splice_min_bytes else None
        self.config = config
        self.loop = loop
        self.limits = limits
        # The request head's serializer, bound once: called once per request.
        self.request_head = RequestHead(via).serialize
        if config.proxy_protocol != "off":
            self.request_head = ProxiedHead(self.request_head, config.proxy_protocol).serialize
        self.redirect_status = redirect_status
        self.retry_statuses = frozenset(config.retry_on_status)
        self.pending = PendingQueue(loop, limits.pending_timeout, self.on_pending_expired)
        self.pending_timeouts = 0
        self.servers = [Server(self, spec, config) for spec in config.servers]
        self._budget = RETRY_BUDGET_FLOOR
        # What each request adds to the retry budget, worked out once: acquire() adds it.
        self._budget_step = config.retry_budget_percent / 100
        # For requests an upstream_peer phase sent here from a route over another backend.
        self.default_balancer = self.balancer("", "")

    def balancer(self, method: str, hash_key: str) -> Balancer:
        """A balancer for one route over this backend's servers."""
        return make_balancer(method or self.config.balance, self.servers, hash_key or self.config.hash_key)

    def start(self) -> None:
        """Open one connection per server so the first request finds one ready; start probes."""
        health = self.config.health
        for server in self.servers:
            server.connect()
            if health.path:
                server.probe = ActiveProbe(server, health, self.loop)
                server.probe.start()

    def stop(self) -> None:
        for server in self.servers:
            if server.probe is not None:
                server.probe.stop()

    def idle_now(self) -> bool:
        """Nothing in flight: no request queued, no connection opening or serving one."""
        return not self.waiting() and not any(server.active or server.connecting for server in self.servers)

    def close(self) -> None:
        """Stop probes and close the idle connections (a pool made for a phase's peer, gone idle)."""
        self.stop()
        for server in self.servers:
            while server.idle:
                server.idle.pop().close()

    def waiting(self) -> int:
        return len(self.pending) + sum(len(server.pending) for server in self.servers)

    # ------------------------------------------------------------- acquire
    def acquire(self, exchange: Exchange) -> None:
        """Attach the exchange to an IDLE connection, or queue it, or refuse it (503)."""
        budget = self._budget + self._budget_step
        self._budget = budget if budget < RETRY_BUDGET_FLOOR else RETRY_BUDGET_FLOOR
        self._dispatch(exchange, front=False)

    def _dispatch(self, exchange: Exchange, front: bool) -> None:
        servers = self.servers
        if len(servers) == 1 and not exchange.tried:
            # The common case, kept short: one server with a warm connection ready.
            server = servers[0]
            if server.idle and server.healthy(self.loop.time()):
                conn = server.take_idle()
                if conn is not None:
                    conn.attach(exchange)
                    return
        now = self.loop.time()
        if len(servers) == 1:
            usable = servers if servers[0].usable(now) else []
        else:
            usable = [server for server in servers if server.usable(now)]
            if exchange.tried:
                untried = [server for server in usable if server not in exchange.tried]
                usable = untried or usable
        if not usable:
            self._refuse(exchange, errors.BackendUnavailable("every server is down"))
            return
        route = exchange.route
        balancer = route.balancer if route.backend is self else self.default_balancer
        if balancer.sticky:
            server = balancer.pick(usable, exchange)
            conn = server.take_idle()
            if conn is not None:
                conn.attach(exchange)
            elif self._room(exchange):
                self._queue(server.pending, exchange, front)
                if server.connecting < len(server.pending) and server.can_connect(now):
                    server.connect()
            return
        candidates = usable if len(usable) == 1 and usable[0].idle else [
            server for server in usable if server.idle or server.can_connect(now)
        ]
        server = balancer.pick(candidates, exchange)
        conn = server.take_idle() if server is not None else None
        if conn is not None:
            conn.attach(exchange)
            return
        if not self._room(exchange):
            return
        self._queue(self.pending, exchange, front)
        if server is not None and server.can_connect(now):
            server.connect()
        else:
            self.grow()  # also when the picked server's idle connections were all stale

    def _room(self, exchange: Exchange) -> bool:
        if self.waiting() >= self.limits.max_pending:
            self._refuse(exchange, errors.BackendUnavailable("pending queue full"))
            return False
        return True

    @staticmethod
    def _queue(queue: PendingQueue, exchange: Exchange, front: bool) -> None:
        if exchange.state is not PENDING:
            exchange.transition(PENDING)
        queue.push(exchange, front)

    @staticmethod
    def _refuse(exchange: Exchange, failure: errors.ProxyFailure) -> None:
        exchange.client.fail(exchange, failure)

    def grow(self) -> None:
        """Open connections while queued requests outnumber connections being opened."""
        now = self.loop.time()
        for server in self.servers:
            while (server.pending and server.connecting < len(server.pending)
                   and server.healthy(now) and server.can_connect(now)):
                server.connect()
        if not self.pending:
            return
        opening = sum(server.connecting for server in self.servers)
        for server in self.servers:
            while opening < len(self.pending) and server.healthy(now) and server.can_connect(now):
                server.connect()
                opening += 1
        if opening < len(self.pending):
            self._schedule_grow(now)

    def _schedule_grow(self, now: float) -> None:
        waits = [s.retry_at for s in self.servers if s.live < s.config.connections and s.healthy(now)]
        if waits and min(waits) > now:
            self.loop.call_at(min(waits), self.grow)

    def on_idle(self, conn: BackendConnection) -> None:
        """A connection turned IDLE: it serves its server's queue, then the backend's."""
        server = conn.server
        if (server.pending.entries or self.pending.entries) and server.healthy(self.loop.time()):
            # Reused at once, often inside the read that completed its last response: check it
            # as take_idle does (one check per reuse, none for a connection that just waits).
            if conn.peer_closed():
                return  # its connection_lost reopens the slot for the queue
            exchange = server.pending.pop() or self.pending.pop()
            if exchange is not None:
                conn.attach(exchange)
                return
        server.idle.append(conn)

    def on_connect_failed(self, server: Server, failure: errors.ProxyFailure) -> None:
        # A connect failure retries on the next server: sticky requests move on.
        for exchange in server.pending.drain():
            exchange.tried.append(server)
            self._redispatch(exchange, failure)
        self.grow()
        if any(s.live for s in self.servers):
            return  # open connections may still serve the backend queue
        # Nothing is open or opening: the queue would only wait for its timeout.
        for exchange in self.pending.drain():
            exchange.client.fail(exchange, failure)

    def _redispatch(self, exchange: Exchange, failure: errors.ProxyFailure) -> None:
        now = self.loop.time()
        if all(s in exchange.tried or not s.usable(now) for s in self.servers):
            exchange.client.fail(exchange, failure)
        else:
            self._dispatch(exchange, front=True)

    def rebalance(self, server: Server) -> None:
        """A server went DOWN: requests queued for it pick another."""
        for exchange in server.pending.drain():
            exchange.tried.append(server)
            self._dispatch(exchange, front=True)

    def on_pending_expired(self, exchange: Exchange) -> None:
        self.pending_timeouts += 1  # read by the metrics (appliance/observe/recorder.py)
        exchange.leave_queue(self.loop.time())
        exchange.client.fail(exchange, errors.PendingTimeout("pending timeout"))

    def cancel_pending(self, exchange: Exchange) -> None:
        exchange.leave_queue(self.loop.time())
        self.pending.remove(exchange)
        for server in self.servers:
            server.pending.remove(exchange)

    # ------------------------------------------------------------- retries
    def retry_stale(self, exchange: Exchange) -> bool:
        """Send again a request whose reused connection died before any answer."""
        if exchange.stale_retries >= MAX_STALE_RETRIES or not exchange.replayable_on_stale():
            return False
        exchange.stale_retries += 1
        exchange.transition(PENDING)
        self._dispatch(exchange, front=True)
        return True

    def can_retry(self, exchange: Exchange, server: Server) -> bool:
        """Whether a request `server` failed (or answered with a retry status) can go elsewhere.

        Only replayable requests, at most `retries` times, within the retry budget, and
        never to the same server again: a server that just failed a request is the least
        likely to serve its second try, and a lone server should not get it twice.
        """
        if not (exchange.replayable() and exchange.retries < self.config.retries and self._budget >= 1):
            return False
        now = self.loop.time()
        return any(s is not server and s not in exchange.tried and s.usable(now) for s in self.servers)

    def retry_failed(self, exchange: Exchange, server: Server) -> bool:
        """Try another server for a request whose server failed before answering."""
        if not self.can_retry(exchange, server):
            return False
        self._budget -= 1
        exchange.retries += 1
        exchange.tried.append(server)
        log.info("retrying %s %s on another server after %s failed", exchange.method.decode(),
                 exchange.url.decode("latin-1"), server.address, extra=about(exchange))
        exchange.transition(PENDING)
        if exchange.phases.upstream_peer is not None:
            exchange.client.choose_peer(exchange, retry=True)  # the phase chooses again, as Pingora's
        else:
            self._dispatch(exchange, front=True)
        return True

    def requeue(self, exchange: Exchange) -> None:
        """A retried request the upstream_peer phase sent (back) to this backend: first in line."""
        self._dispatch(exchange, front=True)
