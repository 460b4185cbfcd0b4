"""The typed configuration tree.

Every key is declared once here, with its kind, default, unit and a sentence of
documentation. The loader validates against these declarations and
docs/configuration.md is generated from them (`python -m appliance.config.docs`),
so the documentation cannot drift from what the code accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config.values import Address

# Key kinds understood by the loader (see loader._convert).
INT = "integer"
STR = "string"
BOOL = "boolean"
DURATION = "duration"
SIZE = "size"
ADDRESS = "address"
STR_LIST = "list of strings"
ADDRESS_LIST = "list of addresses"
TABLE = "table"
TABLE_ARRAY = "array of tables"
TABLE_MAP = "table of named tables"

REQUIRED = object()


def key(
    default: Any = REQUIRED,
    *,
    kind: str,
    doc: str,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    item: type | None = None,
) -> Any:
    """Declare one config key: its kind, default, bounds and documentation."""
    meta = {
        "kind": kind,
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "item": item,
        "required": default is REQUIRED,
    }
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    """A socket the proxy accepts client connections on."""

    name: str = key(kind=STR, doc="Unique name of the listener, used in logs and metrics.")
    bind: Address = key(kind=ADDRESS, doc="Address and port to listen on, as \"host:port\".")
    backlog: int = key(
        1024, kind=INT, minimum=1, maximum=65535,
        doc="Accept queue length per worker socket (capped by net.core.somaxconn).",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """A pool of origin servers that routes send requests to."""

    servers: list[Address] = key(
        kind=ADDRESS_LIST, doc="Origin servers as \"host:port\"; at least one."
    )
    connections: int = key(
        32, kind=INT, minimum=1, maximum=10000,
        doc="Persistent keep-alive connections per worker per server. Requests beyond "
        "this wait in the pending queue.",
    )
    connect_timeout: float = key(
        5.0, kind=DURATION, minimum=0.001, doc="Time allowed to open a connection to a server."
    )
    read_timeout: float = key(
        60.0, kind=DURATION, minimum=0.001,
        doc="Longest silence from a server while a response is awaited or streamed; "
        "past it the client gets 504 (or a cut response if it had started).",
    )
    write_timeout: float = key(
        60.0, kind=DURATION, minimum=0.001,
        doc="Longest time a server may leave our writes unread while a request is sent.",
    )
    retry_delay: float = key(
        1.0, kind=DURATION, minimum=0.001,
        doc="Wait before reconnecting to a server after a failed connect; doubles on "
        "each further failure up to retry_delay_max.",
    )
    retry_delay_max: float = key(
        30.0, kind=DURATION, minimum=0.001, doc="Upper bound of the reconnect back-off."
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """Sends requests whose path starts with a prefix to a backend."""

    backend: str = key(kind=STR, doc="Name of the backend (a [backend.NAME] table).")
    path: str = key(
        "/", kind=STR,
        doc="Path prefix to match; the longest matching prefix in the vhost wins.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class VhostConfig:
    """A virtual host: the Host names it answers for and its routes."""

    name: str = key(kind=STR, doc="Unique name of the virtual host.")
    hosts: list[str] = key(
        ["*"], kind=STR_LIST,
        doc="Host names this vhost answers, globs allowed (\"*.example.com\"). Exact names "
        "win over globs; globs are tried in file order.",
    )
    route: list[RouteConfig] = key(
        kind=TABLE_ARRAY, item=RouteConfig, doc="Routes of this vhost, as [[vhost.route]]."
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Per-connection and per-request bounds that keep a worker safe under pressure."""

    max_header_bytes: int = key(
        16 * 1024, kind=SIZE, minimum=256,
        doc="Largest request line plus header block; larger gets 431.",
    )
    max_body_bytes: int = key(
        0, kind=SIZE,
        doc="Largest request body; larger gets 413. 0 means no limit: bodies are "
        "streamed, never buffered whole, so the limit protects backends, not the proxy.",
    )
    header_timeout: float = key(
        10.0, kind=DURATION, minimum=0.001,
        doc="Time allowed for a request head to arrive once it has begun (or once the "
        "connection opened); past it the client gets 408.",
    )
    keepalive_timeout: float = key(
        75.0, kind=DURATION, minimum=0.001,
        doc="How long an idle client keep-alive connection is kept open between requests.",
    )
    body_timeout: float = key(
        60.0, kind=DURATION, minimum=0.001,
        doc="Longest silence from a client while its request body is read.",
    )
    send_timeout: float = key(
        60.0, kind=DURATION, minimum=0.001,
        doc="Longest time a client may leave our writes unread before it is disconnected.",
    )
    max_pending: int = key(
        1024, kind=INT, minimum=0,
        doc="Requests that may wait for a free backend connection, per backend per "
        "worker; beyond it the answer is 503 with Retry-After.",
    )
    pending_timeout: float = key(
        10.0, kind=DURATION, minimum=0.001,
        doc="Longest wait in the pending queue before the answer is 503 with Retry-After.",
    )
    write_high_watermark: int = key(
        256 * 1024, kind=SIZE, minimum=1,
        doc="When a peer's unsent output passes this, reading from the other side pauses.",
    )
    write_low_watermark: int = key(
        64 * 1024, kind=SIZE, minimum=0,
        doc="Reading from the other side resumes once the peer's unsent output drops "
        "below this.",
    )
    max_pipelined: int = key(
        32, kind=INT, minimum=1,
        doc="Pipelined requests queued per client connection before reading pauses; "
        "reading resumes at half.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """Process-wide proxy behaviour."""

    via: str = key(
        "rproxyd", kind=STR,
        doc="Pseudonym this proxy adds to Via headers in both directions; \"\" disables.",
    )
    drain_timeout: float = key(
        30.0, kind=DURATION, minimum=0.0,
        doc="On graceful stop, how long in-flight requests may run before being cut.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration of one generation."""

    listener: list[ListenerConfig] = key(
        kind=TABLE_ARRAY, item=ListenerConfig, doc="Listening sockets, as [[listener]]."
    )
    backend: dict[str, BackendConfig] = key(
        kind=TABLE_MAP, item=BackendConfig, doc="Backends by name, as [backend.NAME]."
    )
    vhost: list[VhostConfig] = key(
        kind=TABLE_ARRAY, item=VhostConfig,
        doc="Virtual hosts, as [[vhost]]. A request whose Host matches none goes to the "
        "first vhost whose hosts include \"*\", else gets 404.",
    )
    limits: LimitsConfig = key(
        LimitsConfig(), kind=TABLE, item=LimitsConfig, doc="Limits and timeouts, as [limits]."
    )
    proxy: ProxyConfig = key(
        ProxyConfig(), kind=TABLE, item=ProxyConfig, doc="Proxy behaviour, as [proxy]."
    )
    # Where this generation was read from; set by the loader, not a config key.
    sources: tuple[Path, ...] = field(default=(), compare=False)
