"""What every connection of a worker needs, built once per generation.

Below the two sides of the request path and above what they share: the client side
(appliance/http/downstream.py) reads it, the worker (appliance/worker.py) builds it.
It names no connection class (the set of open connections holds the worker's client
connections, the idle queue its compacted idle ones), so this module imports neither side.

In the compiled build it is an extension type (context.pxd): the client side reads it on
every request, and typed fields spare it a dictionary and slot lookup each time. The limits
the request path reads on every request are copied out of `limits` as typed fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.config.schema import LimitsConfig
from appliance.http.idle import IdleClients
from appliance.http.peer import PeerAddresses
from appliance.http.tunnel import TunnelRegistry
from appliance.observe import request_id
from appliance.observe.observer import Observer
from appliance.observe.sampled import SampledLog
from appliance.routing.router import Router
from appliance.routing.trust import TrustedProxies
from appliance.timerwheel import TICK, TimerWheel

# How long a keep-alive connection stays a whole ClientConnection once idle, at least, before
# it is compacted into an IdleClient (appliance/http/idle.py), and how often the sweep that
# compacts them runs (appliance/http/downstream.py, compact_idle): two wheel ticks. A client
# that sends its next request within it (a busy keep-alive client, whose next request comes
# microseconds later) never pays the compaction; one that idles longer holds ~100 bytes, not
# ~400, and since the allocator keeps the high-water mark, only connections active in the
# last spell or two hold a ClientConnection at any time.
COMPACT_AFTER = 2 * TICK

if TYPE_CHECKING:
    from appliance.phases.dispatch import PeerChoice
    from appliance.upstream.peers import PeerPools
    from appliance.upstream.pool import BackendPool


class WorkerContext:
    """What every connection of this worker needs, built once per generation."""

    __slots__ = (
        "clients",
        "compact_after",
        "draining",
        "flood_log",
        "header_timeout",
        "idle",
        "keepalive_timeout",
        "limits",
        "loop",
        "max_pipelined",
        "new_request_id",
        "observer",
        "peer_choice",
        "peer_pools",
        "peers",
        "pools",
        "router",
        "timeout_log",
        "trusted",
        "tunnels",
        "via",
        "wheel",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: LimitsConfig, router: Router,
                 pools: dict[str, BackendPool], trusted: TrustedProxies, timeout_log: SampledLog,
                 flood_log: SampledLog, observer: Observer | None = None,
                 new_request_id: Callable[[], bytes | None] = request_id.never, via: bytes = b"",
                 peer_choice: PeerChoice | None = None, peer_pools: PeerPools | None = None) -> None:
        self.loop = loop
        self.limits = limits
        # The limits read on every request, as typed copies (the request path's own fields).
        self.header_timeout = limits.header_timeout
        self.keepalive_timeout = limits.keepalive_timeout
        # An idle connection's first deadline: compaction, or the keep-alive timeout if shorter.
        self.compact_after = min(COMPACT_AFTER, limits.keepalive_timeout)
        self.max_pipelined = limits.max_pipelined
        self.router = router
        self.pools = pools
        self.trusted = trusted
        # The error-log lines about client timeouts, which can come a thousand at once.
        self.timeout_log = timeout_log
        # The WARNING lines of proxy failures that come in floods (errors.ProxyFailure.sampled).
        self.flood_log = flood_log
        self.observer = Observer() if observer is None else observer
        # Makes an X-Request-Id value, or returns None when [proxy] request_id is off.
        self.new_request_id = new_request_id
        # The worker's open client connections, but for the compacted idle ones in `idle`.
        self.clients: set[Any] = set()
        # This proxy's Via token ([proxy] via; empty: no Via added to responses).
        self.via = via
        # Set when the worker starts draining; the data path may read it to answer every
        # further response with Connection: close (see Worker._drain).
        self.draining = False
        # With [phases]: what an upstream_peer phase returns, checked (PeerChoice), and the
        # pools of the servers only such a phase names (appliance/upstream/peers.py).
        self.peer_choice = peer_choice
        self.peer_pools = peer_pools
        # What a connection derives from its peer's address, once per address (trusted or not, ...).
        self.peers = PeerAddresses(trusted)
        # The loop's timer wheel, where every client connection files its read deadline.
        self.wheel = TimerWheel.of(loop)
        # The compacted idle keep-alive connections, oldest first (appliance/http/idle.py).
        self.idle = IdleClients(loop, self.wheel)
        # The open upgrade tunnels (WebSockets): per-rule counts, drained apart from clients.
        self.tunnels = TunnelRegistry(loop)
