"""Load-balancing methods: each picks one server from the candidates it is given.

The pool decides which servers are candidates (healthy, and for non-sticky methods
able to take a request now); a balancer only chooses among them. Balancers are
built once per rule per worker, so their state (round-robin position, weights,
the hash ring) lives as long as the configuration generation.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange
    from appliance.upstream.server_view import ServerView

METHODS = ("round-robin", "weighted-round-robin", "least-conn", "most-idle", "random", "hash", "rtt")
# Points per unit of weight on the consistent-hash ring (ketama uses 160 per server).
RING_POINTS_PER_WEIGHT = 160


class Balancer(Protocol):
    # Sticky balancers must send a request to the server they pick, even if it is busy.
    sticky: bool

    def pick(self, candidates: Sequence[ServerView], exchange: Exchange) -> ServerView | None: ...


class RoundRobin:
    """Each server in turn, in configuration order, skipping those that cannot take a request.

    The turn follows the full server list, not the candidate list, so a server that is
    briefly busy or down does not shift everyone else's turn. Retries (the exchange
    already failed somewhere) do not advance the turn either: otherwise the request
    after a retry would land on the failing server again.
    """

    sticky = False

    def __init__(self, servers: Sequence[ServerView]) -> None:
        self._servers = list(servers)
        self._turn = -1

    def pick(self, candidates: Sequence[ServerView], exchange: Exchange) -> ServerView | None:
        if not candidates:
            return None
        servers = self._servers
        count = len(servers)
        for step in range(1, count + 1):
            index = (self._turn + step) % count
            server = servers[index]
            if server in candidates:
                if not exchange.tried:
                    self._turn = index
                return server
        return None


class WeightedRoundRobin:
    """Smooth weighted round-robin (as nginx does): weights spread evenly, not in bursts."""

    sticky = False

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def pick(self, candidates: Sequence[ServerView], exchange: Exchange) -> ServerView | None:
        if not candidates:
            return None
        if exchange.tried:  # a retry: do not disturb the rotation of first tries
            return max(candidates, key=lambda server: server.weight)
        current = self._current
        total = 0
        best: ServerView | None = None
        best_score = 0
        for server in candidates:
            score = current.get(id(server), 0) + server.weight
            current[id(server)] = score
            total += server.weight
            if best is None or score > best_score:
                best, best_score = server, score
        current[id(best)] = best_score - total
        return best


class _Scored:
    """Best score wins; ties rotate, so equal servers share the load instead of the first taking all."""

    sticky = False

    def __init__(self) -> None:
        self._turn = 0

    def score(self, server: ServerView) -> float:
        raise NotImplementedError

    def pick(self, candidates: Sequence[ServerView], exchange: Exchange) -> ServerView | None:
        count = len(candidates)
        if not count:
            return None
        self._turn += 1
        best: ServerView | None = None
        best_score = 0.0
        for offset in range(count):
            server = candidates[(self._turn + offset) % count]
            score = self.score(server)
            if best is None or score < best_score:
                best, best_score = server, score
        return best


class LeastConnections(_Scored):
    """Fewest requests in flight (ACTIVE connections plus requests queued for it), per weight."""

    def score(self, server: ServerView) -> float:
        return (server.active + len(server.pending)) / server.weight


class MostIdle(_Scored):
    """RProxy's most-idle: the server with the most pooled connections free for a request.

    RProxy opened every connection up front, so its IDLE count was the server's free
    capacity. These pools open connections on demand: counting only the IDLE ones would
    favour whichever server was busiest a moment ago (it opened the most). Free capacity,
    the connection limit less the requests it is serving or has queued, keeps the meaning.
    """

    def score(self, server: ServerView) -> float:
        return server.active + len(server.pending) - server.config.connections


class Random:
    """Uniform among candidates, or weighted when servers carry weights."""

    sticky = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: Sequence[ServerView], exchange: Exchange) -> ServerView | None:
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        weights = [server.weight for server in candidates]
        return self._rng.choices(candidates, weights)[0]


class LowestRtt(_Scored):
    """RProxy's rtt: the lowest smoothed time to response head; unmeasured servers first."""

    def score(self, server: ServerView) -> float:
        return server.rtt


def _ring_hash(data: bytes) -> list[int]:
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


class ConsistentHash:
    """A ketama-style ring: a server leaving only remaps the keys that were on it."""

    sticky = True

    def __init__(self, servers: Sequence[ServerView], key: Callable[[Exchange], bytes]) -> None:
        self._key = key
        points: list[tuple[int, int]] = []
        for index, server in enumerate(servers):
            # Ring points derive from the address, not the list position, so reordering or
            # removing other servers never moves this server's points.
            for replica in range(RING_POINTS_PER_WEIGHT * server.weight // 4):
                for point in _ring_hash(f"{server.address}-{replica}".encode()):
                    points.append((point, index))
        points.sort()
        self._points = [point for point, _ in points]
        self._owners = [owner for _, owner in points]
        self._servers = list(servers)

    def pick(self, candidates: Sequence[ServerView], exchange: Exchange) -> ServerView | None:
        if not candidates or not self._points:
            return None
        allowed = {id(server) for server in candidates}
        start = bisect.bisect(self._points, _ring_hash(self._key(exchange))[0])
        count = len(self._points)
        for step in range(count):
            server = self._servers[self._owners[(start + step) % count]]
            if id(server) in allowed:
                return server
        return None


def hash_key_function(spec: str) -> Callable[[Exchange], bytes]:
    """Turn "client-ip", "path", "header:NAME" or "cookie:NAME" into a key extractor."""
    if spec == "client-ip":
        return lambda exchange: exchange.client.peer_ip
    if spec == "path":
        return lambda exchange: exchange.url.partition(b"?")[0]
    kind, _, name = spec.partition(":")
    wanted = name.strip().lower().encode()
    if kind == "header":
        def header_value(exchange: Exchange) -> bytes:
            for header, value in exchange.headers:
                if header.lower() == wanted:
                    return value
            return b""

        return header_value
    if kind == "cookie":
        prefix = name.strip().encode() + b"="

        def cookie_value(exchange: Exchange) -> bytes:
            for header, value in exchange.headers:
                if header.lower() == b"cookie":
                    for part in value.split(b";"):
                        part = part.strip()
                        if part.startswith(prefix):
                            return part[len(prefix) :]
            return b""

        return cookie_value
    raise ValueError(f"unknown hash key {spec!r}")


def make_balancer(method: str, servers: Sequence[ServerView], hash_key: str) -> Balancer:
    if method == "round-robin":
        return RoundRobin(servers)
    if method == "weighted-round-robin":
        return WeightedRoundRobin()
    if method == "least-conn":
        return LeastConnections()
    if method == "most-idle":
        return MostIdle()
    if method == "random":
        return Random()
    if method == "rtt":
        return LowestRtt()
    if method == "hash":
        return ConsistentHash(servers, hash_key_function(hash_key))
    raise ValueError(f"unknown balancing method {method!r}")
