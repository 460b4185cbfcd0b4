"""What every connection of a worker needs, built once per generation.

Below the two sides of the request path and above what they share: the client side
(appliance/http/downstream.py) reads it, the worker (appliance/worker.py) builds it.
It names no connection class: the set of open connections is typed by the worker that
fills it (`WorkerContext[ClientConnection]`), so this module imports neither side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from appliance.config.schema import LimitsConfig
from appliance.http.peer import PeerAddresses
from appliance.http.tunnel import TunnelRegistry
from appliance.observe import request_id
from appliance.observe.observer import Observer
from appliance.observe.sampled import SampledLog
from appliance.routing.router import Router
from appliance.routing.trust import TrustedProxies
from appliance.timerwheel import TimerWheel

if TYPE_CHECKING:
    from appliance.phases.dispatch import PeerChoice
    from appliance.upstream.peers import PeerPools
    from appliance.upstream.pool import BackendPool

Client = TypeVar("Client")  # the worker's client connection class


@dataclass(slots=True, eq=False)
class WorkerContext(Generic[Client]):
    """What every connection of this worker needs, built once per generation."""

    loop: asyncio.AbstractEventLoop
    limits: LimitsConfig
    router: Router
    pools: dict[str, BackendPool]
    trusted: TrustedProxies
    # The error-log lines about client timeouts, which can come a thousand at once.
    timeout_log: SampledLog
    # The WARNING lines of proxy failures that come in floods (errors.ProxyFailure.sampled).
    flood_log: SampledLog
    observer: Observer = field(default_factory=Observer)
    # Makes an X-Request-Id value, or returns None when [proxy] request_id is off.
    new_request_id: Callable[[], bytes | None] = request_id.never
    clients: set[Client] = field(default_factory=set)
    # This proxy's Via token ([proxy] via; empty: no Via added to responses).
    via: bytes = b""
    # Set when the worker starts draining; the data path may read it to answer every
    # further response with Connection: close (see Worker._drain).
    draining: bool = False
    # With [phases]: what an upstream_peer phase returns, checked (PeerChoice), and the
    # pools of the servers only such a phase names (appliance/upstream/peers.py).
    peer_choice: PeerChoice | None = None
    peer_pools: PeerPools | None = None
    # What a connection derives from its peer's address, once per address (trusted or not, ...).
    peers: PeerAddresses = field(init=False)
    # The loop's timer wheel, where every client connection files its read deadline.
    wheel: TimerWheel = field(init=False)
    # The open upgrade tunnels (WebSockets): per-rule counts, drained apart from clients.
    tunnels: TunnelRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.peers = PeerAddresses(self.trusted)
        self.wheel = TimerWheel.of(self.loop)
        self.tunnels = TunnelRegistry(self.loop)
