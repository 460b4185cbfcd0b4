"""Phase dispatch compiled once per class at load: bound callables, or None for the built-in.

The request path holds one PhaseDispatch per route and tests each field with `is None`:
a route whose class does not define a phase pays that test and nothing else; a route
without operator phases has NO_PHASES. What a phase returns is checked here, in one
place, so the request path gets a value of the type it expects or a PhaseReturnError
(which it treats as the phase raising: 500, logged, counted).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Any

from appliance.phases import ASYNC_PHASES, Peer, Phases, Response
from appliance.phases.loader import defined_phases

_PEER_CACHE_SIZE = 256


class PhaseDispatch:
    """What the request path calls for one route; None where the class keeps the built-in.

    An extension type in the compiled build (dispatch.pxd): the request path reads its
    fields about a dozen times a request with phases, as C fields.
    """

    __slots__ = ("fail_to_proxy", "logging", "name", "new_ctx", "request_filter", "request_filter_async",
                 "response_body_filter", "response_filter", "response_side", "upstream_peer",
                 "upstream_peer_async", "upstream_request_filter")

    def __init__(self, name: str, new_ctx: Callable[[], Any] | None = None,
                 request_filter: Callable[..., Any] | None = None, request_filter_async: bool = False,
                 upstream_peer: Callable[..., Any] | None = None, upstream_peer_async: bool = False,
                 upstream_request_filter: Callable[..., Any] | None = None,
                 response_filter: Callable[..., Any] | None = None,
                 response_body_filter: Callable[..., Any] | None = None,
                 fail_to_proxy: Callable[..., Any] | None = None,
                 logging: Callable[..., Any] | None = None) -> None:
        self.name = name  # the class, for logs and the per-phase error counters
        self.new_ctx = new_ctx
        self.request_filter = request_filter
        self.request_filter_async = request_filter_async
        self.upstream_peer = upstream_peer
        self.upstream_peer_async = upstream_peer_async
        self.upstream_request_filter = upstream_request_filter
        self.response_filter = response_filter
        self.response_body_filter = response_body_filter
        self.fail_to_proxy = fail_to_proxy
        self.logging = logging
        # Whether a response head has phases to go through (the logging phase sees it as a view).
        self.response_side = (response_filter is not None or logging is not None
                              or response_body_filter is not None)

    def __repr__(self) -> str:
        defined = [name for name in self.__slots__
                   if name not in ("name", "response_side") and getattr(self, name) is not None
                   and getattr(self, name) is not False]  # the *_async flags are bools
        return f"<PhaseDispatch {self.name or '-'}: {', '.join(defined) or 'none'}>"


NO_PHASES = PhaseDispatch("")


def compile_dispatch(instance: Phases) -> PhaseDispatch:
    """The dispatch record of one instance of an operator's class (validated by loader.validate)."""
    cls = type(instance)
    defined = set(defined_phases(cls))
    if not defined - {"new_ctx"}:
        return NO_PHASES  # a ctx nobody reads is not worth making

    def bound(name: str) -> Callable[..., Any] | None:
        return getattr(instance, name) if name in defined else None

    def is_async(name: str) -> bool:
        return name in defined and name in ASYNC_PHASES and inspect.iscoroutinefunction(getattr(cls, name))

    return PhaseDispatch(
        name=cls.__name__,
        # Without its own new_ctx the default's empty dict, made by the builtin directly.
        new_ctx=bound("new_ctx") or dict,
        request_filter=bound("request_filter"),
        request_filter_async=is_async("request_filter"),
        upstream_peer=bound("upstream_peer"),
        upstream_peer_async=is_async("upstream_peer"),
        upstream_request_filter=bound("upstream_request_filter"),
        response_filter=bound("response_filter"),
        response_body_filter=bound("response_body_filter"),
        fail_to_proxy=bound("fail_to_proxy"),
        logging=bound("logging"),
    )


class PhaseReturnError(TypeError):
    """A phase returned something its contract does not allow."""


def response_or_none(value: Any, phase: str) -> Response | None:
    """request_filter's and fail_to_proxy's result: a Response, or None to go on."""
    if value is None or type(value) is Response:
        return value
    raise PhaseReturnError(f"{phase} returned {_shown(value)}; expected a Response or None")


def body_bytes(value: Any) -> bytes:
    """response_body_filter's result: the bytes to send."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise PhaseReturnError(f"response_body_filter returned {_shown(value)}; expected bytes")


class PeerChoice:
    """upstream_peer's result, turned into None (the route's choice), a backend name, or a Peer.

    A string that names a configured backend is that backend; any other string must be
    "host:port". Strings are parsed once and remembered (a bounded table, reset when
    full), since a phase typically returns one of a few constants.
    """

    __slots__ = ("_backends", "_parsed")

    def __init__(self, backends: Collection[str]) -> None:
        self._backends = frozenset(backends)
        self._parsed: dict[str, str | Peer] = {}

    def __call__(self, value: Any) -> str | Peer | None:
        if value is None or type(value) is Peer:
            return value
        if type(value) is not str:
            raise PhaseReturnError(f"upstream_peer returned {_shown(value)}; expected None, a backend "
                                   "name, \"host:port\" or a Peer")
        choice = self._parsed.get(value)
        if choice is None:
            choice = value if value in self._backends else self._address(value)
            if len(self._parsed) >= _PEER_CACHE_SIZE:
                self._parsed.clear()
            self._parsed[value] = choice
        return choice

    def _address(self, value: str) -> Peer:
        try:
            return Peer(value)
        except ValueError as exc:
            known = ", ".join(sorted(self._backends)) or "none"
            raise PhaseReturnError(f"upstream_peer returned {value!r}: no backend of that name (known: "
                                   f"{known}), and not a server address: {exc}") from None


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
