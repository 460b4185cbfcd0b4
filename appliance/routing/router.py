"""Host and path matching, compiled once per configuration generation.

Per request: the Host is looked up in a dict (exact names, then a memo of earlier
glob results), and the path is compared against the vhost's prefixes, longest
first. Nothing is compiled or lowercased per request beyond the Host itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import translate
from typing import Any

from appliance.config.schema import Config, VhostConfig

_HOST_MEMO_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled route: where requests under `prefix` of `vhost` go."""

    vhost: str
    prefix: bytes
    backend: Any  # the worker's BackendPool for this route's backend


@dataclass(slots=True)
class _Vhost:
    name: str
    routes: list[Route]  # longest prefix first

    def match(self, path: bytes) -> Route | None:
        for route in self.routes:
            if path.startswith(route.prefix):
                return route
        return None


class Router:
    """Picks the route for a (host, path) pair."""

    def __init__(self, config: Config, backend_for: Callable[[str], Any]) -> None:
        self._exact: dict[bytes, _Vhost] = {}
        self._globs: list[tuple[re.Pattern[bytes], _Vhost]] = []
        self._default: _Vhost | None = None
        self._memo: dict[bytes, _Vhost | None] = {}
        for vhost_config in config.vhost:
            vhost = self._compile(vhost_config, backend_for)
            for pattern in vhost_config.hosts:
                host = pattern.lower().encode("idna" if pattern.isascii() else "utf-8")
                if pattern == "*":
                    if self._default is None:
                        self._default = vhost
                elif any(ch in pattern for ch in "*?["):
                    self._globs.append((re.compile(translate(host.decode()).encode()), vhost))
                else:
                    self._exact.setdefault(host, vhost)

    @staticmethod
    def _compile(config: VhostConfig, backend_for: Callable[[str], Any]) -> _Vhost:
        routes = [Route(config.name, r.path.encode(), backend_for(r.backend)) for r in config.route]
        routes.sort(key=lambda route: len(route.prefix), reverse=True)
        return _Vhost(config.name, routes)

    def match(self, host: bytes, path: bytes) -> Route | None:
        """The route for a request, or None (404). `host` may carry a :port."""
        vhost = self._exact.get(host)
        if vhost is None:
            vhost = self._find_vhost(host)
            if vhost is None:
                return None
        return vhost.match(path)

    def _find_vhost(self, host: bytes) -> _Vhost | None:
        try:
            return self._memo[host]
        except KeyError:
            pass
        name = host.lower()
        # Strip the port: "[v6]:port" keeps its brackets, "name:port" loses ":port".
        name = name[: name.find(b"]") + 1] if name.startswith(b"[") else name.partition(b":")[0]
        name = name.rstrip(b".")
        vhost = self._exact.get(name)
        if vhost is None:
            for pattern, candidate in self._globs:
                if pattern.match(name):
                    vhost = candidate
                    break
            else:
                vhost = self._default
        if len(self._memo) < _HOST_MEMO_LIMIT:
            self._memo[host] = vhost
        return vhost
