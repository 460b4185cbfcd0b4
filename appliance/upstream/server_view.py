"""What the parts a server is made of see of it and of its pool.

A Server and its BackendPool (appliance/upstream/pool.py) create the backend
connections, health probes and balancers, which call back into them: a connection
reports that it connected, closed or failed and asks for retries; a probe takes the
server out of rotation; a balancer reads weights and load. Typed against these
views, connection.py, health.py and balance.py sit below pool.py instead of
importing it back, and whatever else creates connections later (an h2 session, a
pool a phase names) only needs to offer the same few members.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sized
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from appliance.config.schema import BackendConfig, LimitsConfig
    from appliance.config.values import Address
    from appliance.http.exchange import Exchange
    from appliance.upstream.splice import PipePool


class PoolView(Protocol):
    """The backend's pool, as its servers' connections and probes use it."""

    loop: asyncio.AbstractEventLoop
    limits: LimitsConfig
    pipes: PipePool | None  # zero-copy bodies, or None when splice is off
    redirect_status: int
    retry_statuses: frozenset[int]
    request_head: Callable[[Exchange], bytes]

    def can_retry(self, exchange: Exchange, server: ServerView) -> bool: ...
    def retry_failed(self, exchange: Exchange, server: ServerView) -> bool: ...
    def retry_stale(self, exchange: Exchange) -> bool: ...
    def grow(self) -> None: ...
    def rebalance(self, server: ServerView) -> None: ...


class ServerView(Protocol):
    """One origin server, as its connections, its probe and the balancers use it."""

    pool: PoolView
    address: Address
    config: BackendConfig
    tls: ssl.SSLContext | None
    tls_name: str | None
    weight: int
    rtt: float  # smoothed seconds to the response head
    active: int  # ACTIVE connections
    pending: Sized  # requests queued for this server alone

    def note_failure(self, now: float) -> None: ...
    def note_rtt(self, seconds: float) -> None: ...
    def on_connected(self, conn: object) -> None: ...
    def on_closed(self, conn: object, previous: object) -> None: ...
    def release(self, conn: object) -> None: ...
