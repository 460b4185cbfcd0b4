"""Which client addresses are trusted proxies (their X-Forwarded-For and X-Real-IP are kept)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence


class TrustedProxies:
    """Decided once per client connection, not per request."""

    __slots__ = ("_networks", "everyone")

    def __init__(self, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._networks = tuple(networks)
        self.everyone = {str(n) for n in networks} >= {"0.0.0.0/0", "::/0"}

    def __contains__(self, address: str) -> bool:
        if self.everyone:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False  # a Unix socket peer or unknown: not a proxy we know
        return any(ip in network for network in self._networks)
