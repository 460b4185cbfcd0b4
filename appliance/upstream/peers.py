"""Pools for servers that only an upstream_peer phase names, made on demand in each worker.

A phase may return a Peer (or "host:port") that no [backend] lists. Each distinct Peer
gets a one-server BackendPool, built from the Peer's settings over a defaults
BackendConfig, the first time a request goes there. Their number is bounded
([phases] max_peer_pools): a phase that returns a new address per request must not
grow a worker's memory and sockets without limit, so past the bound a request to a
new peer gets 503 (what nginx answers when no upstream server can be used). A pool
no request used for [phases] peer_pool_idle_timeout seconds, and that has nothing in
flight, is closed and forgotten; the next request to that peer makes it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from appliance.config.schema import BackendConfig
from appliance.config.values import ServerSpec, parse_address
from appliance.phases import Peer
from appliance.upstream.pool import BackendPool

log = logging.getLogger("rproxyd.pool")

_DEFAULTS = BackendConfig(servers=[])


def peer_config(peer: Peer) -> BackendConfig:
    """The [backend] settings of a peer's pool: the defaults, with the Peer's address, TLS and timeouts."""
    changes: dict[str, object] = {
        "servers": [ServerSpec(parse_address(peer.address))],
        "tls": peer.tls,
        "tls_verify": peer.verify,
        "tls_ca": peer.ca or "",
        "tls_sni": peer.sni or "",
        # One server: a failure is not retried on it (BackendPool.can_retry).
        "retries": 0,
    }
    for name in ("connect_timeout", "read_timeout", "write_timeout"):
        value = getattr(peer, name)
        if value is not None:
            changes[name] = float(value)
    return dataclasses.replace(_DEFAULTS, **changes)


class PeerPools:
    """One worker's pools for phase-named peers: bounded in number, closed when idle."""

    __slots__ = ("_idle_timeout", "_limit", "_loop", "_make", "_sweep", "_used", "pools")

    def __init__(self, loop: asyncio.AbstractEventLoop, make: Callable[[str, BackendConfig], BackendPool],
                 limit: int, idle_timeout: float) -> None:
        self._loop = loop
        self._make = make
        self._limit = limit
        self._idle_timeout = idle_timeout
        self.pools: dict[Peer, BackendPool] = {}
        self._used: dict[Peer, float] = {}  # loop time of each pool's last request
        self._sweep: asyncio.TimerHandle | None = None

    def get(self, peer: Peer) -> BackendPool | None:
        """The pool for `peer`, made now if need be; None when the bound is reached."""
        pool = self.pools.get(peer)
        if pool is None:
            if len(self.pools) >= self._limit:
                return None
            pool = self.pools[peer] = self._make(f"peer {peer.address}", peer_config(peer))
            if self._sweep is None:
                self._sweep = self._loop.call_later(self._idle_timeout, self._close_idle)
        self._used[peer] = self._loop.time()
        return pool

    def _close_idle(self) -> None:
        self._sweep = None
        idle_since = self._loop.time() - self._idle_timeout
        for peer, pool in list(self.pools.items()):
            if self._used[peer] <= idle_since and pool.idle_now():
                del self.pools[peer], self._used[peer]
                pool.close()
                log.info("%s: closed, unused for %.0fs", pool.name, self._idle_timeout)
        if self.pools:
            self._sweep = self._loop.call_later(self._idle_timeout, self._close_idle)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        self._used.clear()
