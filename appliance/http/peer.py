"""What a client connection derives from its peer's address, made once per address and worker.

The address as bytes, whether it is a trusted proxy, and the end of the X-Forwarded-For
line every request head carries. Connections from one address (a load balancer in front, a
NAT, a benchmark client) share one copy of these instead of holding their own: about 110
bytes per idle keep-alive connection, and a new connection skips the trusted-proxy lookup
and the formatting (issue 15).
"""

from __future__ import annotations

from appliance.routing.trust import TrustedProxies

# Addresses remembered per worker, at most; past that the memory starts over (a flood of
# distinct addresses costs a lookup each, as before, and never more memory than this).
MAX_ADDRESSES = 4096

PeerFacts = tuple[bytes, bool, bytes]  # (address, trusted proxy, forwarded tail)


class PeerAddresses:
    __slots__ = ("_known", "_trusted")

    def __init__(self, trusted: TrustedProxies) -> None:
        self._trusted = trusted
        self._known: dict[tuple[str, bytes], PeerFacts] = {}

    def facts(self, address: str, proto: bytes) -> PeerFacts:
        """The facts of a peer at `address` ("" if unknown) on a listener speaking `proto`."""
        key = (address, proto)
        facts = self._known.get(key)
        if facts is None:
            if len(self._known) >= MAX_ADDRESSES:
                self._known.clear()
            ip = address.encode()
            facts = self._known[key] = (ip, address in self._trusted,
                                         b"%s\r\nX-Forwarded-Proto: %s\r\n" % (ip, proto))
        return facts
