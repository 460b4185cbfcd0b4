"""The worker's observer: counts each exchange into its metrics slot, hands it to the access log.

Per exchange (the hot path) this does a handful of integer additions into a
private table of counts at offsets resolved when the worker started, and one
list append for the access log; no string is built. Every SYNC_INTERVAL a timer
writes the gauges (connections by state, health, pending depth) into the table
and copies it into the worker's shared-memory slot in one slice assignment.
Compiled, the table is a 64-bit array typed as a memoryview (recorder.pxd), so
each addition is a C one: as a Python list the per-request metrics cost 3-4% of
a request (perf/README.md, the ablation row of 2026-12-07). Interpreted, it is a
list: adding to a list item costs less than to an array's or to a memoryview
cell of the mmap (perf/observe_cost.py). A scrape sees counts at most
SYNC_INTERVAL old. The price: a worker killed by SIGKILL loses its last
SYNC_INTERVAL of counts (a graceful exit syncs in close()).
"""

from __future__ import annotations

import asyncio
from array import array
from typing import TYPE_CHECKING

from appliance.observe import metrics as m
from appliance.observe.accesslog import AccessLog
from appliance.observe.observer import Observer

if TYPE_CHECKING:
    from collections.abc import Sized

    from appliance.http.exchange import Exchange
    from appliance.http.tunnel import TunnelRegistry
    from appliance.upstream.pool import BackendPool, Server

SYNC_INTERVAL = 0.5

# The histogram bounds as C doubles (typed in recorder.pxd): _bucket reads them in a C loop.
_BOUNDS = array("d", m.BOUNDS)
_CLASS_OF = m.CLASS_OF
_R_IN, _R_OUT, _R_DUR = m.R_BYTES_IN, m.R_BYTES_OUT, m.R_DURATION
_R_DUR_SUM = m.R_DURATION + m.BUCKETS
_S_SUM = m.BUCKETS
_B_WAIT, _B_WAIT_SUM = m.B_WAIT, m.B_WAIT + m.BUCKETS
_SCALE = m.SUM_SCALE
# Whether this module runs compiled (its file is then the extension's), without importing
# Cython, which the interpreted build does not need.
_COMPILED = not __file__.endswith(".py")


def _zero_counts(size: int) -> array | list[int]:
    """The worker's table of counts: compiled, a 64-bit array that recorder.pxd types as a
    memoryview (C additions); interpreted, a list, whose item additions cost less than an
    array's."""
    return array("q", bytes(8 * size)) if _COMPILED else [0] * size


def _bucket(seconds: float) -> int:
    """The histogram bucket of `seconds`: bisect.bisect_left over the bounds, as a loop the
    compiled build runs in C (a bisect call boxed the float and compared Python objects; it
    was two calls per request). The bounds are few and most requests land in the first ones."""
    count = len(_BOUNDS)
    i = 0
    while i < count and _BOUNDS[i] < seconds:
        i += 1
    return i


class Recorder(Observer):
    """Metrics and access log for one worker."""

    __slots__ = ("_backends", "_cells", "_counts", "_h2", "_loop", "_no_route", "_phase_errors",
                 "_proxy_refused", "_routes", "_servers", "_timeouts", "_timer", "_tunnels", "_used",
                 "_waiting", "_worker", "access", "clients", "idle", "tunnels")

    def __init__(self, cells: memoryview, layout: m.Layout, pools: dict[str, BackendPool],
                 loop: asyncio.AbstractEventLoop, access: AccessLog | None, clients: set, idle: Sized,
                 tunnels: TunnelRegistry | None = None) -> None:
        self._cells = cells  # the shared slot; written only by sync()
        self._counts = _zero_counts(len(cells))
        # Only the cells this layout reaches are copied on sync (every block is < DISCARD cells).
        self._used = min(len(cells), max(_bases(layout)) + m.DISCARD)
        self._loop = loop
        self._routes = layout.routes
        self._no_route = layout.no_route
        self._worker = layout.worker
        self._timeouts = layout.timeouts
        self._phase_errors = layout.phase_errors
        self._proxy_refused = layout.proxy_refused
        self._tunnels = layout.tunnels
        self._h2 = layout.h2
        self._waiting = layout.waiting
        self.tunnels = tunnels  # the worker's open upgrade tunnels, for the gauge
        self.clients = clients  # the worker's open client connections, for the gauge,
        self.idle = idle  # with its compacted idle ones (appliance/http/idle.py)
        # Keyed by the worker's own objects: one dict lookup per exchange, no label text.
        self._servers: dict[Server, int] = {
            server: layout.servers.get((name, str(server.address)), m.CAPACITY)
            for name, pool in pools.items() for server in pool.servers
        }
        self._backends: dict[BackendPool, int] = {
            pool: layout.backends.get(name, m.CAPACITY) for name, pool in pools.items()
        }
        self.access = access
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._tick()
        if self.access is not None:
            self.access.start()

    def exchange_done(self, exchange: Exchange) -> None:
        # `self._counts` on every line, not a local: the attribute is what recorder.pxd types.
        ended = self._loop.time()
        route = exchange.route
        base = self._no_route if route is None else self._routes.get(route.name, m.CAPACITY)
        status_class = _CLASS_OF[exchange.status // 100 % 10]
        self._counts[base + status_class] += 1
        self._counts[base + _R_IN] += exchange.head_bytes + exchange.body_received
        self._counts[base + _R_OUT] += exchange.bytes_out
        duration = ended - exchange.started
        bucket = _bucket(duration)
        self._counts[base + _R_DUR + bucket] += 1
        self._counts[base + _R_DUR_SUM] += int(duration * _SCALE)
        # A server of a pool made for an upstream_peer phase's Peer has no cells (the metrics
        # layout is fixed by the configuration): its requests count on the route only.
        server_base = self._servers.get(exchange.server)
        if server_base is not None:
            base = server_base
            spent = exchange.upstream_time
            bucket = _bucket(spent)
            self._counts[base + bucket] += 1
            self._counts[base + _S_SUM] += int(spent * _SCALE)
        waited = exchange.queue_wait
        if waited and exchange.backend in self._backends:
            base = self._backends[exchange.backend]
            bucket = _bucket(waited)
            self._counts[base + _B_WAIT + bucket] += 1
            self._counts[base + _B_WAIT_SUM] += int(waited * _SCALE)
        access = self.access
        if access is not None:
            records = access.records
            records.append((exchange, ended))
            if len(records) >= access.batch:
                access.flush()

    def tunnel_closed(self, reason: int, up: int, down: int) -> None:
        cells = self._counts
        base = self._tunnels
        cells[base + m.TUN_UP] += up
        cells[base + m.TUN_DOWN] += down
        cells[base + m.TUN_CLOSED + reason] += 1

    def tls_handshake(self, resumed: bool) -> None:
        self._counts[self._worker + (m.W_TLS_RESUMED if resumed else m.W_TLS_FULL)] += 1

    def h2_connection(self, opened: bool) -> None:
        self._counts[self._h2 + m.H2_CONNECTIONS] += 1 if opened else -1

    def h2_stream(self, opened: bool) -> None:
        cells = self._counts
        base = self._h2
        if opened:
            cells[base + m.H2_STREAMS] += 1
            cells[base + m.H2_STREAMS_TOTAL] += 1
        else:
            cells[base + m.H2_STREAMS] -= 1

    def h2_goaway(self, error_code: int) -> None:
        self._counts[self._h2 + (m.H2_GOAWAY_ERROR if error_code else m.H2_GOAWAY_GRACEFUL)] += 1

    def client_timeout(self, phase: int) -> None:
        self._counts[self._timeouts + phase] += 1

    def phase_error(self, phase: int) -> None:
        self._counts[self._phase_errors + phase] += 1

    def proxy_header_refused(self, reason: int) -> None:
        self._counts[self._proxy_refused + reason] += 1

    def _tick(self) -> None:
        self.sync()
        self._timer = self._loop.call_later(SYNC_INTERVAL, self._tick)

    def sync(self) -> None:
        """Take the gauges from the pools, then publish everything to the shared slot."""
        cells = self._counts
        now = self._loop.time()
        waiting = len(self.idle)
        cells[self._worker + m.W_CONNECTIONS] = len(self.clients) + waiting
        cells[self._waiting] = waiting
        if self.tunnels is not None:
            cells[self._tunnels + m.TUN_OPEN] = len(self.tunnels.open)
        for server, base in self._servers.items():
            idle = len(server.idle)
            cells[base + m.S_IDLE] = idle
            cells[base + m.S_ACTIVE] = server.active
            cells[base + m.S_CONNECTING] = server.connecting
            cells[base + m.S_DOWN] = max(0, server.config.connections - server.live)
            cells[base + m.S_UP] = 1 if server.healthy(now) else 0
        for pool, base in self._backends.items():
            cells[base + m.B_PENDING] = pool.waiting()
            # A counter kept by the pool itself (pool.py stays free of metrics code).
            cells[base + m.B_TIMEOUTS] = pool.pending_timeouts
        used = self._used
        self._cells[:used] = array("Q", cells[:used])

    def reopen(self) -> None:
        if self.access is not None:
            self.access.reopen()

    def close(self) -> None:
        """Before the worker exits: last gauges and counters, last access-log batch."""
        if self._timer is not None:
            self._timer.cancel()
        self.sync()
        if self.access is not None:
            self.access.close()


def _bases(layout: m.Layout) -> list[int]:
    return [layout.no_route, layout.worker, layout.timeouts, layout.phase_errors, layout.proxy_refused,
            layout.tunnels, layout.h2, layout.waiting,
            *layout.routes.values(),
            *layout.servers.values(), *layout.backends.values()]
