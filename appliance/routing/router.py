"""Virtual hosts and rules, compiled once per configuration generation.

Per request: the Host is looked up in a dict (exact names, then a memo of earlier
glob results). Within the vhost, rules are tried in file order and the first
match wins; exact-path rules sit in a dict, so a request costs one dict lookup
plus the non-exact rules that come before the exact hit, however many exact
rules there are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import translate
from typing import Any

from appliance.config.rewrite import expand_template
from appliance.config.schema import Config, RouteConfig, VhostConfig
from appliance.phases.dispatch import NO_PHASES, PhaseDispatch
from appliance.routing.policy import HeaderPolicy

_HOST_MEMO_LIMIT = 4096
_NO_EXACT = 1 << 30
# What Allow says a rule taking any method accepts (TRACE refused, CONNECT never proxied).
ANY_METHOD = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"))


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A compiled rule: where matching requests go and what happens on the way."""

    vhost: str
    name: str  # "vhost[index]" for logs and metrics
    index: int
    backend: Any  # the worker's BackendPool
    balancer: Any  # the rule's Balancer over that pool's servers
    methods: frozenset[bytes] | None
    allow_trace: bool  # else TRACE gets 405 (ClientConnection._start)
    rewrite: re.Pattern[bytes] | None
    rewrite_to: bytes
    request_policy: HeaderPolicy | None
    response_policy: HeaderPolicy | None
    redirect_allow: re.Pattern[bytes] | None
    # Upgrade tunnels: the protocols a client may switch to (never h2c), and how many tunnels
    # the rule may hold open per worker (0: no limit); see appliance/http/tunnel.py.
    upgrade: frozenset[bytes] = frozenset()
    max_tunnels: int = 0

    def target(self, url: bytes) -> bytes:
        """The request target sent to the backend: the URL after this rule's rewrite."""
        if self.rewrite is None:
            return url
        path, mark, query = url.partition(b"?")
        new_path, count = self.rewrite.subn(self.rewrite_to, path, count=1)
        if not count:
            return url
        if b"?" in new_path:
            return new_path  # the replacement brings its own query
        return new_path + mark + query

    def allowed_methods(self) -> frozenset[bytes]:
        """What a 405 for a refused TRACE lists in Allow: the rule's methods, or the common ones."""
        return self.methods or ANY_METHOD

    def redirect_allowed(self, path: bytes) -> bool:
        return self.redirect_allow is not None and self.redirect_allow.fullmatch(path) is not None


class _Matcher:
    """A non-exact rule: prefix, glob or regex over the path."""

    __slots__ = ("index", "kind", "methods", "pattern", "prefix", "route")

    def __init__(self, config: RouteConfig, route: Route) -> None:
        self.route = route
        # The route's, copied: Vhost.match reads them for every rule it passes (typed fields
        # in the compiled build, where the Route's own are a dataclass's).
        self.index = route.index
        self.methods = route.methods
        self.kind = config.match
        self.prefix = config.path.encode()
        self.pattern: re.Pattern[bytes] | None = None
        if config.match == "glob":
            self.pattern = re.compile(translate(config.path).encode())
        elif config.match == "regex":
            self.pattern = re.compile(config.path.encode())

    def matches(self, path: bytes) -> bool:
        if self.kind == "prefix":
            return path.startswith(self.prefix)
        if self.kind == "glob":
            return self.pattern.match(path) is not None
        return self.pattern.search(path) is not None


class Vhost:
    __slots__ = ("exact", "name", "others", "phases")

    def __init__(self, name: str, phases: PhaseDispatch = NO_PHASES) -> None:
        self.name = name
        self.phases = phases  # the operator's phases every request of this vhost runs
        self.exact: dict[bytes, list[Route]] = {}
        self.others: list[_Matcher] = []

    def match(self, method: bytes, path: bytes) -> Route | None:
        exact = None
        for route in self.exact.get(path, ()):
            if route.methods is None or method in route.methods:
                exact = route
                break
        limit = exact.index if exact is not None else _NO_EXACT
        for matcher in self.others:
            if matcher.index > limit:
                break
            if (matcher.methods is None or method in matcher.methods) and matcher.matches(path):
                return matcher.route
        return exact

    def methods_for(self, path: bytes) -> set[bytes] | None:
        """Methods some rule would take for this path; None if any method would do or none match."""
        allowed: set[bytes] = set()
        routes = list(self.exact.get(path, ())) + [m.route for m in self.others if m.matches(path)]
        for route in routes:
            if route.methods is None:
                return None
            allowed |= route.methods
        return allowed or None


class Router:
    """Picks the route for a (host, method, path)."""

    def __init__(self, config: Config, backend_for: Callable[[str], Any],
                 phases: Sequence[PhaseDispatch] = ()) -> None:
        """`phases`: each vhost's compiled phases, in config order (appliance/phases/selection.py)."""
        self._exact: dict[bytes, Vhost] = {}
        self._globs: list[tuple[re.Pattern[bytes], Vhost]] = []
        self._default: Vhost | None = None
        self._memo: dict[bytes, Vhost | None] = {}
        for index, vhost_config in enumerate(config.vhost):
            vhost = self._compile(vhost_config, backend_for)
            if phases:
                vhost.phases = phases[index]
            if vhost_config.default:
                self._default = vhost
            for pattern in vhost_config.hosts:
                host = pattern.lower().encode()
                if any(ch in pattern for ch in "*?["):
                    self._globs.append((re.compile(translate(host.decode()).encode()), vhost))
                else:
                    self._exact.setdefault(host, vhost)

    @staticmethod
    def _compile(config: VhostConfig, backend_for: Callable[[str], Any]) -> Vhost:
        vhost = Vhost(config.name)
        for index, rule in enumerate(config.route):
            pool = backend_for(rule.backend)
            rewrite = re.compile(rule.rewrite.encode()) if rule.rewrite else None
            route = Route(
                vhost=config.name,
                name=f"{config.name}[{index}]",
                index=index,
                backend=pool,
                balancer=pool.balancer(rule.balance, rule.hash_key),
                methods=frozenset(m.encode() for m in rule.methods) or None,
                allow_trace=rule.allow_trace,
                rewrite=rewrite,
                rewrite_to=(expand_template(rule.rewrite_to, re.compile(rule.rewrite)).encode()
                            if rewrite is not None else b""),
                request_policy=HeaderPolicy.compile([config.request_headers, rule.request_headers]),
                response_policy=HeaderPolicy.compile([config.response_headers, rule.response_headers]),
                redirect_allow=(re.compile(b"|".join(translate(g).encode() for g in rule.internal_redirect))
                                if rule.internal_redirect else None),
                upgrade=frozenset(token.lower().encode() for token in rule.upgrade),
                max_tunnels=rule.max_tunnels,
            )
            if rule.match == "exact":
                vhost.exact.setdefault(rule.path.encode(), []).append(route)
            else:
                vhost.others.append(_Matcher(rule, route))
        return vhost

    def vhost(self, host: bytes) -> Vhost | None:
        """The vhost a Host selects (`match` and `allowed_methods` of it route), or None."""
        return self._exact.get(host) or self._find_vhost(host)

    def match(self, host: bytes, method: bytes, path: bytes) -> Route | None:
        """The route for a request, or None. `host` may carry a :port."""
        vhost = self._exact.get(host)
        if vhost is None:
            vhost = self._find_vhost(host)
            if vhost is None:
                return None
        return vhost.match(method, path)

    def allowed_methods(self, host: bytes, path: bytes) -> set[bytes] | None:
        """After a failed match: the methods rules would take for this path (for a 405)."""
        vhost = self._exact.get(host) or self._find_vhost(host)
        return vhost.methods_for(path) if vhost is not None else None

    def vhost_name(self, host: bytes | None) -> str:
        """The name of the vhost a Host (or TLS SNI) selects; "" when none does.

        The TLS layer uses it to pick a vhost's certificate by SNI and to check that a
        request's Host names the vhost its handshake was for. No SNI selects like an
        empty Host: the default (or catch-all) vhost.
        """
        host = host or b""
        vhost = self._exact.get(host) or self._find_vhost(host)
        return vhost.name if vhost is not None else ""

    def _find_vhost(self, host: bytes) -> Vhost | None:
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
