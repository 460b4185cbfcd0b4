"""Request heads for a backend with `proxy_protocol`: the PROXY header first, then one request.

A PROXY header names one client (its address and port) for the whole TCP connection, so
such a connection carries that client's request and closes: HAProxy's `send-proxy` makes
its server connections private to one client connection for the same reason. Pooling keyed
by the client address would mislabel a second client behind the same address (its port
differs), and keyed by address and port it would almost never be hit. The connection is
opened as any other (the pool's warm connections wait unwritten), the header goes out with
its first request head in one write, the head says `Connection: close`, and
`Server.release` closes it instead of pooling it (appliance/upstream/pool.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.http.proxy_protocol import encode_v1, encode_v2

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange

ENCODERS = {"v1": encode_v1, "v2": encode_v2}


class ProxiedHead:
    """Wraps a request-head serializer (RequestHead.serialize) with the PROXY header."""

    __slots__ = ("_encode", "_head")

    def __init__(self, head: Callable[[Exchange], bytes | None], version: str) -> None:
        self._head = head
        self._encode = ENCODERS[version]

    def serialize(self, exchange: Exchange) -> bytes | None:
        head = self._head(exchange)
        if head is None:
            return None
        client = exchange.client
        source = (client.peer_ip.decode(), client.peer_port) if client.peer_ip else None
        # The head ends with its blank line: Connection: close goes before it.
        return self._encode(source, client.local_address()) + head[:-2] + b"Connection: close\r\n\r\n"


def health_prefix(version: str) -> bytes:
    """What a health probe sends first: a header with no client (v2 LOCAL, v1 UNKNOWN)."""
    return ENCODERS[version](None, None) if version != "off" else b""
