"""The request head a backend gets: built in this one place, from the parsed request.

Never the client's raw bytes: the method, target and headers as the client side parsed
them and routing left them (the route's rewrite is in `exchange.target`, its header
policy is applied here first, then the operator's upstream_request_filter), then the
headers the proxy vouches for (X-Forwarded-*, X-Real-IP, X-Request-Id, Via) appended
last, so nothing that edited the headers before can spoof them. Hot path: one list of
lines and one join per request; the Via line and the per-connection X-Forwarded-For
tail are made once, not per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.http.headers import serialize_fields
from appliance.phases import calls

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange


class RequestHead:
    """Serializes request heads for the backends, with this proxy's Via token."""

    __slots__ = ("_via_line_10", "_via_line_11", "via")

    def __init__(self, via: bytes) -> None:
        self.via = via
        # The Via line (and the blank line ending the head) for requests that carry no Via.
        self._via_line_11 = b"Via: 1.1 " + via + b"\r\n\r\n"
        self._via_line_10 = b"Via: 1.0 " + via + b"\r\n\r\n"

    def serialize(self, exchange: Exchange) -> bytes | None:
        """The head for this try; None if upstream_request_filter failed (exchange.failure says how)."""
        client = exchange.client
        # The route's header policy is the built-in upstream request filter: it edits the
        # client's headers, never the proxy's own below.
        policy = exchange.route.request_policy
        headers = exchange.headers if policy is None else policy.apply(exchange.headers)
        method, target = exchange.method, exchange.target
        if exchange.phases.upstream_request_filter is not None:
            # The operator's, on what the built-in left; the proxy's own headers come after it.
            edited = calls.upstream_request(exchange, headers)
            if edited is None:
                return None
            method, target, headers = edited
        # Pieces for one join: no line is concatenated first (serialize_fields).
        lines = [method, b" ", target, b" HTTP/1.1\r\n"]
        serialize_fields(lines, headers)
        if exchange.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if exchange.upgrade is not None:  # the route's protocols only, never h2c (_offer_upgrade)
            lines.append(b"Upgrade: " + exchange.upgrade + b"\r\nConnection: upgrade\r\n")
        # The proxy's own lines as pieces too: appending a piece makes no new bytes object.
        lines.append(b"X-Forwarded-For: ")
        forwarded = exchange.forwarded_for if client.trusted else None
        if forwarded:
            lines.append(forwarded)
            lines.append(b", ")
        # "<peer>\r\nX-Forwarded-Proto: <proto>\r\n" (and a TLS connection's X-SSL-* lines), made
        # once per connection, not per request.
        lines.append(client.forwarded_tail)
        real_ip = exchange.real_ip  # set only from a trusted proxy
        lines.append(b"X-Real-IP: ")
        lines.append(client.peer_ip if real_ip is None else real_ip)
        if exchange.host is not None:
            lines.append(b"\r\nX-Forwarded-Host: ")
            lines.append(exchange.host)
            lines.append(b"\r\n")
        else:
            lines.append(b"\r\n")
            lines.append(exchange.server.host_line)
        rid = exchange.request_id
        if rid is None:
            rid = exchange.request_id = client.ctx.new_request_id()
        if rid is not None:
            lines.append(b"X-Request-Id: ")
            lines.append(rid)
            lines.append(b"\r\n")
        via = self.via
        if exchange.via:
            lines.append(b"Via: %s, %s %s\r\n\r\n" % (exchange.via, _via_version(exchange.version), via)
                         if via else b"Via: " + exchange.via + b"\r\n\r\n")
        elif via:
            version = exchange.version
            lines.append(self._via_line_11 if version == "1.1" else self._via_line_10 if version == "1.0"
                         else b"Via: 2 " + via + b"\r\n\r\n")  # an HTTP/2 stream
        else:
            lines.append(b"\r\n")
        return b"".join(lines)


def _via_version(version: str) -> bytes:
    """The client's protocol as a Via names it (RFC 9110 7.6.3): "1.1", "1.0", or "2" for HTTP/2."""
    return b"2" if version == "2.0" else version.encode()
