"""Metrics in shared memory: one slot of uint64 cells per worker process, summed on scrape.

Workers stay shared-nothing: each live worker owns one slot (the number of its
heartbeat cell, which the supervisor hands out and never gives to two live
processes, so an old and a new generation draining side by side never share a
cell) and only ever adds to its own cells. The supervisor folds the counters of
a worker that exited into the RETIRED slot before the slot is reused, so totals
survive worker deaths, reloads and the in-place upgrade (the region is handed
over with the others).

Which cell means what is the series directory, kept at the start of the region:
a list of (family, labels, part), where the index is the cell number in every
slot. Series are only ever appended (a reload that removes a vhost leaves its
totals behind; Prometheus counters must not go backwards), and a label set is
registered as one contiguous block, so the data path resolves a block's base
cell once per configuration and adds fixed offsets per request.

Region layout:
    [0, 8)                   length of the directory JSON
    [8, DIRECTORY_END)       the directory, JSON
    [DIRECTORY_END, ...)     SLOTS slots of CELLS cells (heartbeat cells, then RETIRED)
"""

from __future__ import annotations

import json
import logging
import struct
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

from appliance.config.schema import Config
from appliance.http.tunnel import CLOSE_REASONS
from appliance.phases import PHASES
from appliance.process import heartbeat
from appliance.shm import SharedRegion

log = logging.getLogger("rproxyd.metrics")

REGION_NAME = "metrics"
CELLS = 8192  # cells per slot; the directory never grows past CAPACITY
DISCARD = 64  # the last cells of every slot: where a block goes once the directory is full
CAPACITY = CELLS - DISCARD
SLOT_BYTES = CELLS * 8
SLOTS = heartbeat.CELLS + 1
RETIRED = heartbeat.CELLS  # folded counters of exited workers, and the supervisor's own
_LENGTH = struct.Struct("=Q")
DIRECTORY_END = 1 << 20
REGION_SIZE = DIRECTORY_END + SLOTS * SLOT_BYTES  # sparse: only touched pages take memory

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# Family name: (type, help). The supervisor-written families come last.
FAMILIES: dict[str, tuple[str, str]] = {
    "rproxyd_requests_total": (COUNTER, "Requests by vhost, rule and status class (499: client went away)."),
    "rproxyd_received_bytes_total": (COUNTER, "Request bytes received from clients (head and body)."),
    "rproxyd_sent_bytes_total": (COUNTER, "Response bytes sent to clients."),
    "rproxyd_request_duration_seconds": (
        HISTOGRAM, "First request byte to last response byte, by vhost and rule."),
    "rproxyd_upstream_response_seconds": (
        HISTOGRAM, "Request sent to the backend to response complete, by backend server."),
    "rproxyd_pending_wait_seconds": (
        HISTOGRAM, "Time requests waited in a backend's pending queue for a connection."),
    "rproxyd_backend_connections": (
        GAUGE, "Backend connections by state, summed over workers; down: configured but not open."),
    "rproxyd_backend_server_up": (GAUGE, "Workers that consider the server healthy."),
    "rproxyd_pending_requests": (GAUGE, "Requests waiting for a backend connection."),
    "rproxyd_pending_timeouts_total": (COUNTER, "Requests answered 503 after pending_timeout."),
    "rproxyd_client_connections": (GAUGE, "Open client connections."),
    "rproxyd_client_connections_waiting": (
        GAUGE, "Open HTTP/1 client connections idle between requests, compacted (after 0.1-0.2 s idle)."),
    "rproxyd_tls_handshakes_total": (COUNTER, "Completed TLS handshakes, full or resumed."),
    "rproxyd_client_timeouts_total": (
        COUNTER, "Client connections ended by a timeout, by phase: header or body (408), send (cut)."),
    "rproxyd_proxy_headers_refused_total": (
        COUNTER, "Connections to a proxy_protocol listener closed before HTTP, by reason: untrusted "
        "(the peer is not in trusted_proxies), invalid (not a valid PROXY header), timeout, "
        "truncated (the peer closed inside the header)."),
    "rproxyd_phase_errors_total": (
        COUNTER, "Operator phases that raised or returned what their contract does not allow, by phase."),
    "rproxyd_tunnels_open": (GAUGE, "Open upgrade tunnels (WebSockets), after their 101."),
    "rproxyd_tunnel_bytes_total": (
        COUNTER, "Bytes relayed through closed upgrade tunnels, by direction."),
    "rproxyd_tunnels_closed_total": (COUNTER, "Upgrade tunnels closed, by reason."),
    "rproxyd_h2_connections": (GAUGE, "Open HTTP/2 client connections."),
    "rproxyd_h2_streams": (GAUGE, "Open HTTP/2 request streams."),
    "rproxyd_h2_streams_total": (COUNTER, "HTTP/2 request streams opened by clients."),
    "rproxyd_h2_goaways_total": (
        COUNTER, "GOAWAY frames sent to HTTP/2 clients, by reason: graceful (drain, idle), error (a "
        "protocol error, a flood or too many glitches closed the connection)."),
    "rproxyd_worker_restarts_total": (COUNTER, "Workers that died outside a drain and were respawned."),
    "rproxyd_reloads_total": (COUNTER, "Reloads and upgrades, by result."),
    "rproxyd_generation": (GAUGE, "The configuration generation now serving."),
    "rproxyd_workers": (GAUGE, "Worker processes alive, draining ones included."),
}

# Histogram upper bounds, seconds; the last bucket is +Inf.
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BUCKETS = len(BOUNDS) + 1
SUM_SCALE = 1_000_000  # histogram sums are kept in whole microseconds

# Offsets inside a route block.
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
# status // 100 → offset of its class cell; statuses are three digits, anything else is "other".
CLASS_OF = (0, 1, 2, 3, 4, 5, 0, 0, 0, 0)
R_BYTES_IN = len(STATUS_CLASSES)
R_BYTES_OUT = R_BYTES_IN + 1
R_DURATION = R_BYTES_OUT + 1  # BUCKETS bucket cells, then the sum
# Offsets inside a server block: the upstream histogram, then connection gauges.
S_IDLE = BUCKETS + 1
S_ACTIVE, S_CONNECTING, S_DOWN, S_UP = S_IDLE + 1, S_IDLE + 2, S_IDLE + 3, S_IDLE + 4
CONNECTION_STATES = ("idle", "active", "connecting", "down")
# Offsets inside a backend block: pending depth, pending timeouts, pending-wait histogram.
B_PENDING, B_TIMEOUTS, B_WAIT = 0, 1, 2
# The per-worker block, and the supervisor's block in the RETIRED slot.
W_CONNECTIONS, W_TLS_FULL, W_TLS_RESUMED = 0, 1, 2
# Offsets inside the client-timeouts block (per worker), one per phase.
TIMEOUT_PHASES = ("header", "body", "send")
T_HEADER, T_BODY, T_SEND = 0, 1, 2
# Offsets inside the refused-PROXY-headers block (per worker), one per reason.
PROXY_REFUSALS = ("untrusted", "invalid", "timeout", "truncated")
PP_UNTRUSTED, PP_INVALID, PP_TIMEOUT, PP_TRUNCATED = 0, 1, 2, 3
P_RESTARTS, P_RELOADS_OK, P_RELOADS_FAILED, P_GENERATION, P_WORKERS = 0, 1, 2, 3, 4

NO_ROUTE = ("-", "-")  # vhost and rule of requests that matched none (400, 404, …)

Entry = tuple[str, str, str]  # family, labels as Prometheus text, part ("", "sum" or a bucket bound)


def labels(**pairs: str) -> str:
    """Prometheus label text, values escaped as the exposition format requires."""
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return ",".join(f'{name}="{escape(value)}"' for name, value in pairs.items())


def _histogram(family: str, label_text: str) -> list[Entry]:
    bounds = [f"{b:g}" for b in BOUNDS] + ["+Inf"]
    return [(family, label_text, bound) for bound in bounds] + [(family, label_text, "sum")]


def route_block(vhost: str, rule: str) -> list[Entry]:
    text = labels(vhost=vhost, rule=rule)
    codes = [labels(vhost=vhost, rule=rule, code=code) for code in STATUS_CLASSES]
    return [("rproxyd_requests_total", code, "") for code in codes] + [
        ("rproxyd_received_bytes_total", text, ""),
        ("rproxyd_sent_bytes_total", text, ""),
        *_histogram("rproxyd_request_duration_seconds", text),
    ]


def server_block(backend: str, server: str) -> list[Entry]:
    text = labels(backend=backend, server=server)
    return [
        *_histogram("rproxyd_upstream_response_seconds", text),
        *[("rproxyd_backend_connections", labels(backend=backend, server=server, state=s), "")
          for s in CONNECTION_STATES],
        ("rproxyd_backend_server_up", text, ""),
    ]


def backend_block(backend: str) -> list[Entry]:
    text = labels(backend=backend)
    return [("rproxyd_pending_requests", text, ""), ("rproxyd_pending_timeouts_total", text, ""),
            *_histogram("rproxyd_pending_wait_seconds", text)]


WORKER_BLOCK: list[Entry] = [
    ("rproxyd_client_connections", "", ""),
    ("rproxyd_tls_handshakes_total", labels(resumed="false"), ""),
    ("rproxyd_tls_handshakes_total", labels(resumed="true"), ""),
]
# Its own block, not part of WORKER_BLOCK: a block is found by its first entry, so one that
# grew would overlap the next in a region an older version laid out (in-place upgrade).
CLIENT_TIMEOUTS_BLOCK: list[Entry] = [
    ("rproxyd_client_timeouts_total", labels(phase=phase), "") for phase in TIMEOUT_PHASES
]
# One cell per phase, in appliance.phases.PHASES order (appliance/phases/calls.py PHASE_INDEX).
PHASE_ERRORS_BLOCK: list[Entry] = [
    ("rproxyd_phase_errors_total", labels(phase=phase), "") for phase in PHASES
]
PROXY_REFUSED_BLOCK: list[Entry] = [
    ("rproxyd_proxy_headers_refused_total", labels(reason=reason), "") for reason in PROXY_REFUSALS
]
# Idle keep-alive client connections held compacted, per worker (appliance/http/idle.py): nginx's
# stub_status "Waiting", less the ones idle for under 0.1 to 0.2 s.
WAITING_BLOCK: list[Entry] = [("rproxyd_client_connections_waiting", "", "")]
# Upgrade tunnels, per worker: the gauge, bytes both ways, closes by reason (CLOSE_REASONS order).
TUNNELS_BLOCK: list[Entry] = [
    ("rproxyd_tunnels_open", "", ""),
    ("rproxyd_tunnel_bytes_total", labels(direction="client_to_backend"), ""),
    ("rproxyd_tunnel_bytes_total", labels(direction="backend_to_client"), ""),
    *[("rproxyd_tunnels_closed_total", labels(reason=reason), "") for reason in CLOSE_REASONS],
]
TUN_OPEN, TUN_UP, TUN_DOWN, TUN_CLOSED = 0, 1, 2, 3
# HTTP/2 from clients, per worker (appliance/http/h2_downstream.py).
H2_BLOCK: list[Entry] = [
    ("rproxyd_h2_connections", "", ""),
    ("rproxyd_h2_streams", "", ""),
    ("rproxyd_h2_streams_total", "", ""),
    ("rproxyd_h2_goaways_total", labels(reason="graceful"), ""),
    ("rproxyd_h2_goaways_total", labels(reason="error"), ""),
]
H2_CONNECTIONS, H2_STREAMS, H2_STREAMS_TOTAL, H2_GOAWAY_GRACEFUL, H2_GOAWAY_ERROR = 0, 1, 2, 3, 4
SUPERVISOR_BLOCK: list[Entry] = [
    ("rproxyd_worker_restarts_total", "", ""),
    ("rproxyd_reloads_total", labels(result="ok"), ""),
    ("rproxyd_reloads_total", labels(result="failed"), ""),
    ("rproxyd_generation", "", ""),
    ("rproxyd_workers", "", ""),
]


@dataclass(slots=True, eq=False)
class Layout:
    """Base cells of every block one configuration uses; computed before fork, read by workers."""

    routes: dict[str, int] = field(default_factory=dict)  # rule name → route block
    vhosts: dict[str, str] = field(default_factory=dict)  # rule name → vhost, for the NO_ROUTE block
    servers: dict[tuple[str, str], int] = field(default_factory=dict)  # (backend, "host:port")
    backends: dict[str, int] = field(default_factory=dict)
    no_route: int = 0
    worker: int = 0
    timeouts: int = 0
    phase_errors: int = 0
    proxy_refused: int = 0
    tunnels: int = 0
    h2: int = 0
    waiting: int = 0
    supervisor: int = 0


class Directory:
    """The series directory: appended to by the supervisor, read by whoever renders."""

    def __init__(self, region: SharedRegion) -> None:
        self._view = region.view
        (length,) = _LENGTH.unpack_from(self._view, 0)
        self.entries: list[Entry] = (
            [tuple(e) for e in json.loads(bytes(self._view[8:8 + length]))] if length else []
        )
        self._index = {entry: i for i, entry in enumerate(self.entries)}
        self._bytes = length
        self._full_warned = False

    def block(self, entries: list[Entry]) -> int:
        """Base cell of a block of series, registered (contiguously) if new."""
        first = self._index.get(entries[0])
        if first is not None:
            return first
        size = sum(len(_encode(entry)) + 1 for entry in entries)
        if len(self.entries) + len(entries) > CAPACITY or 8 + self._bytes + size + 2 > DIRECTORY_END:
            if not self._full_warned:
                log.error("metrics directory full (%d series): new series are not counted",
                          len(self.entries))
                self._full_warned = True
            return CAPACITY
        self._bytes += size
        base = len(self.entries)
        for entry in entries:
            self._index[entry] = len(self.entries)
            self.entries.append(entry)
        return base

    def layout(self, config: Config) -> Layout:
        """Register the series one configuration needs and save the directory."""
        layout = Layout()
        layout.supervisor = self.block(SUPERVISOR_BLOCK)
        layout.worker = self.block(WORKER_BLOCK)
        layout.timeouts = self.block(CLIENT_TIMEOUTS_BLOCK)
        layout.phase_errors = self.block(PHASE_ERRORS_BLOCK)
        layout.proxy_refused = self.block(PROXY_REFUSED_BLOCK)
        layout.tunnels = self.block(TUNNELS_BLOCK)
        layout.h2 = self.block(H2_BLOCK)
        layout.waiting = self.block(WAITING_BLOCK)
        layout.no_route = self.block(route_block(*NO_ROUTE))
        for vhost in config.vhost:
            for index in range(len(vhost.route)):
                rule = f"{vhost.name}[{index}]"  # as appliance.routing.router names it
                layout.routes[rule] = self.block(route_block(vhost.name, rule))
        for name, backend in config.backend.items():
            layout.backends[name] = self.block(backend_block(name))
            for spec in backend.servers:
                address = str(spec.address)
                layout.servers[(name, address)] = self.block(server_block(name, address))
        self._save()
        return layout

    def _save(self) -> None:
        data = json.dumps(self.entries, separators=(",", ":")).encode()  # fits: block() checked
        self._view[8:8 + len(data)] = data
        _LENGTH.pack_into(self._view, 0, len(data))


def _encode(entry: Entry) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode()


def slot_cells(region: SharedRegion, slot: int) -> memoryview:
    """The cells of one slot, as unsigned 64-bit integers (aligned, so writes are atomic)."""
    start = DIRECTORY_END + slot * SLOT_BYTES
    return memoryview(region.view)[start:start + SLOT_BYTES].cast("Q")


class MetricsBoard:
    """The supervisor's side: clears slots for new workers, folds exited ones, sums for a scrape."""

    def __init__(self, region: SharedRegion) -> None:
        self.region = region
        self.directory = Directory(region)
        self._counters: list[int] = []  # cells that are counters (folded), by directory position
        self.retired = slot_cells(region, RETIRED)
        self.supervisor = self.directory.block(SUPERVISOR_BLOCK)

    def clear(self, slot: int) -> None:
        """Zero a slot before a new worker takes it."""
        slot_cells(self.region, slot)[:] = memoryview(bytes(SLOT_BYTES)).cast("Q")

    def fold(self, slot: int) -> None:
        """Add an exited worker's counters to RETIRED, then clear its slot (its gauges die with it)."""
        cells, retired = slot_cells(self.region, slot), self.retired
        for i in self._counter_cells():
            if cells[i]:
                retired[i] += cells[i]
        self.clear(slot)

    def _counter_cells(self) -> list[int]:
        entries = self.directory.entries
        if len(self._counters) != len(entries):
            self._counters = [i for i, (family, _, _) in enumerate(entries) if FAMILIES[family][0] != GAUGE]
        return self._counters

    def add(self, offset: int, amount: int = 1) -> None:
        """Count a supervisor event (restart, reload) in its RETIRED cell."""
        self.retired[self.supervisor + offset] += amount

    def set(self, offset: int, value: int) -> None:
        self.retired[self.supervisor + offset] = value

    def totals(self, live_slots: Iterable[int]) -> list[int]:
        """Every series summed over the live slots and RETIRED, by directory position."""
        count = len(self.directory.entries)
        totals = self.retired[:count].tolist()
        for slot in live_slots:
            values = slot_cells(self.region, slot)[:count].tolist()
            totals = [a + b for a, b in zip(totals, values, strict=True)]
        return totals

    def cell(self, slot: int, index: int) -> int:
        return slot_cells(self.region, slot)[index]


def bucket(seconds: float) -> int:
    """Offset of the histogram bucket counting a duration."""
    return bisect_left(BOUNDS, seconds)


@dataclass(slots=True, eq=False)
class WorkerSlot:
    """What a forked worker needs to count: the region, its slot, its generation's layout."""

    region: SharedRegion
    slot: int
    layout: Layout

    def cells(self) -> memoryview:
        return slot_cells(self.region, self.slot)

    @classmethod
    def private(cls, config: Config) -> WorkerSlot:
        """A slot in memory of its own, for a worker run without a supervisor."""
        region = SharedRegion.create(REGION_NAME, REGION_SIZE)
        return cls(region, 0, Directory(region).layout(config))
