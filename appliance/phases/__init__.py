"""Programmable request phases: the API an operator's Python module is written against.

    from appliance.phases import Phases, Response

    class Site(Phases):
        def request_filter(self, req, ctx):
            if req.path.startswith("/admin") and req.client_ip != "10.0.0.5":
                return Response(403, body=b"no\\n")

        def upstream_request_filter(self, req, ctx):
            req.headers.set("X-Tenant", req.host)

Configured with `[phases] module = "/etc/rproxy/phases/site.py"` (and optionally
`class = "Site"`; a vhost may name its own with `phases = "Class"`). Every phase is
optional: a phase the class does not define costs a route nothing, and the built-in
behaviour (routing, balancing, the header policy, error pages) is what happens.
docs/phases.md is the guide; the contract of each phase is written once, below, on
the method of `Phases` that names it. The name and habit come from Pingora's
ProxyHttp trait (pingora-proxy/src/proxy_trait.rs).

The request path calls them through appliance/phases/calls.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.config.values import parse_address
from appliance.phases.headers import RESPONSE_OWNED, Headers, raw_from
from appliance.phases.views import Request, ResponseHead

__all__ = ["ASYNC_PHASES", "PHASES", "Headers", "Peer", "Phases", "Request", "Response", "ResponseHead"]


class Phases:
    """Base class of an operator's phases. Override the phases you need; leave the rest.

    One instance per class per worker process, made when the worker starts (so
    `__init__` takes no argument besides self and may open files or sockets for that
    worker). Phases of many requests run on the same instance, one at a time unless a
    phase is `async` and awaits: keep per-request state in `ctx`, not on `self`.

    Phases run in this order, each at most once per request unless noted:
    new_ctx, request_filter, upstream_peer, upstream_request_filter, response_filter,
    response_body_filter (per chunk), logging; fail_to_proxy replaces the response
    path when the request fails. Only request_filter and upstream_peer may be `async`;
    while an async phase awaits, the request waits as for a server (a body is buffered,
    bounded); if the exchange ends first (the client went away, a timeout), the
    phase's task is cancelled.

    An exception escaping a phase answers that request with 500 (fail_to_proxy is
    still asked, with error.phase naming the phase), logs the traceback with the
    request id, and counts in /metrics per phase; the worker serves on.
    """

    def new_ctx(self) -> Any:
        """Make the per-request object handed to every other phase as `ctx`.

        Runs first, once per request, before request_filter. The default gives a new
        empty dict. Define it to use your own class (a class with `__slots__` is
        cheapest) or to return None when no phase keeps state.
        """
        return {}

    def request_filter(self, req: Request, ctx: Any) -> Response | None:
        """Answer the request yourself, or let it go on.

        Runs once the request head is complete, before any backend is chosen; the
        request body has not been read. Return a `Response` to send it to the client
        without any backend (authentication, rate limits, redirects, maintenance
        pages), or None to go on. `req` is read-only here. May be `async`.
        """
        return None

    def upstream_peer(self, req: Request, ctx: Any) -> str | Peer | None:
        """Choose where the request goes.

        Runs after request_filter, when the proxy is about to pick a server, and again
        before each retry. Return None to keep the route's choice (its backend and
        balancing method); the name of a configured backend to use that backend's
        servers, balancing and health instead; or a server of your own as "host:port"
        or as a `Peer` (with TLS, SNI and timeouts). Connections to such servers are
        pooled per worker, on demand. `req` is read-only here. May be `async`.
        """
        return None

    def upstream_request_filter(self, req: Request, ctx: Any) -> None:
        """Edit the request that goes to the server.

        Runs once a server is chosen, before the request head is written to it (again
        before each retry, each time starting from the request the built-ins would send).
        Assign `req.method`, `req.path` and `req.query`, and edit `req.headers`; the return
        value is ignored. The headers
        the proxy sets itself (X-Forwarded-*, X-Real-IP, X-Request-Id, Via, X-SSL-*) and
        the framing ones are added after this phase: setting one here raises.
        """
        return None

    def response_filter(self, req: Request, resp: ResponseHead, ctx: Any) -> None:
        """Edit the response head the client gets.

        Runs when a server's response head has arrived, before it goes to the client
        (not for a Response your request_filter or fail_to_proxy returned, nor for the
        proxy's own error responses). Assign `resp.status` and edit `resp.headers`; the
        return value is ignored.
        """
        return None

    def response_body_filter(self, req: Request, chunk: bytes, end: bool, ctx: Any) -> bytes:
        """Rewrite the response body, chunk by chunk. Opt-in: define it only if you need it.

        Runs for each piece of a server's response body as it arrives, and once more
        with `end=True` (and possibly an empty chunk) when the body is complete. Return
        the bytes to send in place of `chunk` (b"" to hold everything back for now).
        Only the routes whose class defines this phase lose splice(2) relaying; the
        proxy drops Content-Length and re-frames the body (chunked to an HTTP/1.1
        client, ended by the close to an HTTP/1.0 one), so the length may change.
        """
        return chunk

    def fail_to_proxy(self, req: Request, error: Exception, ctx: Any) -> Response | None:
        """Choose the response for a request that failed.

        Runs when the proxy cannot give the client a server's response: no route, no
        server, connect or read failures, timeouts, a refused request, or an exception
        in a phase. `error.status` is the status the proxy would send (502, 503, 504,
        500 for a phase's exception, ...). Return a `Response` to send instead, or None
        for the proxy's default error page. Not called once a response has started.
        """
        return None

    def logging(self, req: Request, resp: ResponseHead | None, error: Exception | None, ctx: Any) -> None:
        """Observe the finished exchange.

        Runs exactly once per request that reached new_ctx, after the last byte went
        to the client or the exchange was abandoned. `resp` is what the client got
        (None if no response head went out), `error` the failure if there was one
        (a client that went away before any response: resp and error None, 499 in
        the access log).
        Nothing here can change the response; an exception is logged and counted.
        """
        return None


# The phases in the order a request meets them, and those that may be `async`.
PHASES: tuple[str, ...] = ("new_ctx", "request_filter", "upstream_peer", "upstream_request_filter",
                           "response_filter", "response_body_filter", "fail_to_proxy", "logging")
ASYNC_PHASES = frozenset(("request_filter", "upstream_peer"))

_NO_BODY_STATUSES = frozenset((204, 304))


class Response:
    """A response a phase sends instead of the server's: Response(403, body=b"no\\n").

    `headers` is a dict or a list of (name, value) pairs (str); the proxy adds
    Content-Length and Connection, so those (and the other headers the proxy
    manages) are refused. `body` is bytes, or str (sent as UTF-8).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str] | Iterable[tuple[str, str]] | None = None,
                 body: bytes | str = b"") -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"invalid status {status!r}: expected an integer from 200 to 599")
        if isinstance(body, str):
            body = body.encode()
        elif isinstance(body, bytearray | memoryview):
            body = bytes(body)
        elif not isinstance(body, bytes):
            raise TypeError(f"body: expected bytes or str, got {type(body).__name__}")
        if body and status in _NO_BODY_STATUSES:
            raise ValueError(f"a {status} response has no body")
        self.status = status
        self.headers = Headers(raw_from(headers, RESPONSE_OWNED), RESPONSE_OWNED)
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


@dataclass(frozen=True, slots=True)
class Peer:
    """A server a phase names itself: Peer("10.0.0.7:443", tls=True, sni="api.example.com").

    `address` is "host:port" ("[v6]:port" for IPv6). With `tls`, the certificate is
    verified (`verify`) against `ca` (a file or directory; None: the system's CAs) and
    the name `sni` (None: the host, when it is a name). Timeouts are in seconds; None
    takes the default of the same [backend.NAME] key. Peers compare equal by value,
    and connections are pooled per distinct peer, so make them once (at module level
    or in __init__) rather than per request.
    """

    address: str
    tls: bool = False
    sni: str | None = None
    verify: bool = True
    ca: str | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    write_timeout: float | None = None
    host: str = field(init=False, compare=False)
    port: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        parsed = parse_address(self.address)  # ValueError saying what was expected
        if parsed.port == 0:
            raise ValueError(f"{self.address!r}: a peer needs a port other than 0")
        object.__setattr__(self, "host", parsed.host)
        object.__setattr__(self, "port", parsed.port)
        for name in ("tls", "verify"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Peer {name}: expected True or False")
        for name in ("sni", "ca"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"Peer {name}: expected a non-empty str or None")
        for name in ("connect_timeout", "read_timeout", "write_timeout"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or value <= 0):
                raise ValueError(f"Peer {name}: expected a positive number of seconds or None, got {value!r}")
