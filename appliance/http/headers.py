"""Header classification and head serialization for both directions.

Header names are looked up, as they are parsed, in one dict that says what the
proxy does with them (by lowercase name; a name's spelling as sent is remembered
with its action, so a name seen before is not lowercased again); every name not
in the dict is forwarded untouched (original case kept, as nginx does).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

# What to do with a request header on its way to the backend.
REQ_HOST = 1
REQ_CONTENT_LENGTH = 2
REQ_TRANSFER_ENCODING = 3
REQ_CONNECTION = 4
REQ_DROP = 5  # hop-by-hop, or a header the proxy sets itself
REQ_EXPECT = 6
REQ_FORWARDED_FOR = 7
REQ_VIA = 8
REQ_REQUEST_ID = 9
REQ_REAL_IP = 10
REQ_UPGRADE = 11  # hop-by-hop; offered to the backend only for the route's upgrade tokens

# Hop-by-hop headers (RFC 9110 7.6.1) plus the pre-standard Proxy-Connection.
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding",
     b"upgrade", b"proxy-connection")
)

REQUEST_ACTIONS: dict[bytes, int] = {
    b"host": REQ_HOST,
    b"content-length": REQ_CONTENT_LENGTH,
    b"transfer-encoding": REQ_TRANSFER_ENCODING,
    b"connection": REQ_CONNECTION,
    b"keep-alive": REQ_DROP,
    b"te": REQ_DROP,
    b"trailer": REQ_DROP,
    b"upgrade": REQ_UPGRADE,
    b"proxy-connection": REQ_DROP,
    b"expect": REQ_EXPECT,
    b"x-forwarded-for": REQ_FORWARDED_FOR,
    # The proxy sets these itself; client-sent copies could spoof them.
    b"x-forwarded-proto": REQ_DROP,
    b"x-forwarded-host": REQ_DROP,
    b"via": REQ_VIA,
    # Kept only from trusted proxies, then sent again by the proxy (appliance/observe/request_id.py).
    b"x-request-id": REQ_REQUEST_ID,
    # Kept only from trusted proxies; else the proxy sets it to the client address.
    b"x-real-ip": REQ_REAL_IP,
}

REQ_FORWARD = 0  # not in REQUEST_ACTIONS: forwarded as it came (request_action's answer)

# Headers the proxy sets or extends itself (appliance/http/request_head.py); a client's
# copy may only arrive in the canonical spelling, through the action REQUEST_ACTIONS gives it.
PROXY_HEADERS = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"via",
                 b"x-real-ip")
# X-SSL-* describe the proxy's own TLS session; a client-sent one is always a spoof.
SSL_PREFIXES = frozenset((b"x-ssl-", b"x_ssl_", b"x-ssl_", b"x_ssl-"))


def underscore_spellings(name: bytes) -> Iterator[bytes]:
    """`name` with some or all of its '-' written as '_' (not `name` itself).

    CGI and WSGI servers map '-' and '_' to the same variable (X_Forwarded_Proto and
    X-Forwarded-Proto both become HTTP_X_FORWARDED_PROTO), so each spelling is the header.
    """
    parts = name.split(b"-")
    for separators in itertools.product((b"-", b"_"), repeat=len(parts) - 1):
        spelling = parts[0] + b"".join(sep + part for sep, part in zip(separators, parts[1:], strict=True))
        if spelling != name:
            yield spelling


# Dropped rather than merged: no proxy we trust writes these spellings. Listed in the dict
# instead of normalizing every name, so the common header costs no more than one lookup.
REQUEST_ACTIONS.update(
    {spelling: REQ_DROP for name in PROXY_HEADERS for spelling in underscore_spellings(name)})

# What to do with a response header on its way to the client.
RESP_FORWARD = 0  # not in RESPONSE_ACTIONS: forwarded as it came (response_action's answer)
RESP_CONTENT_LENGTH = 1
RESP_TRANSFER_ENCODING = 2
RESP_CONNECTION = 3
RESP_DROP = 4
RESP_VIA = 5
RESP_UPGRADE = 6  # hop-by-hop; read only to check a 101 switches to the protocol that was offered

RESPONSE_ACTIONS: dict[bytes, int] = {
    b"content-length": RESP_CONTENT_LENGTH,
    b"transfer-encoding": RESP_TRANSFER_ENCODING,
    b"connection": RESP_CONNECTION,
    b"keep-alive": RESP_DROP,
    b"te": RESP_DROP,
    b"trailer": RESP_DROP,
    b"upgrade": RESP_UPGRADE,
    b"proxy-connection": RESP_DROP,
    b"via": RESP_VIA,
}

# Indexed by a name's length (names of 256 bytes or more excepted): 1 where some name in
# RESPONSE_ACTIONS has that length. Most response headers an origin sends (Date, Server,
# Content-Type, ETag, Last-Modified...) have a length no such name has: they are forwarded
# without a table lookup, which would hash the fresh bytes object the parser made.
_ACTION_NAME_SIZES = {len(name) for name in RESPONSE_ACTIONS}
RESPONSE_ACTION_LENGTHS = bytes(size in _ACTION_NAME_SIZES for size in range(256))

# Header names as they arrived (any case) with their action: a name seen before, as nearly
# every name on a keep-alive connection is, costs one dict lookup and no lower(). The
# parsers call request_action / response_action for a name not in the table yet. Names
# are the peers' to choose, so each table is cleared when it reaches NAME_TABLE_SIZE.
REQUEST_NAME_ACTIONS: dict[bytes, int] = {}
RESPONSE_NAME_ACTIONS: dict[bytes, int] = {}
NAME_TABLE_SIZE = 1024


def request_action(name: bytes) -> int:
    """REQUEST_ACTIONS' action for a request header name in any case (REQ_FORWARD if none;
    X-SSL-* in any spelling REQ_DROP: they describe our own TLS session, a client's is a spoof),
    remembered in REQUEST_NAME_ACTIONS."""
    lname = name.lower()
    action = REQUEST_ACTIONS.get(lname, REQ_FORWARD if lname[:6] not in SSL_PREFIXES else REQ_DROP)
    _remember(REQUEST_NAME_ACTIONS, name, action)
    return action


def response_action(name: bytes) -> int:
    """RESPONSE_ACTIONS' action for a response header name in any case (RESP_FORWARD if none),
    remembered in RESPONSE_NAME_ACTIONS."""
    action = RESPONSE_ACTIONS.get(name.lower(), RESP_FORWARD)
    _remember(RESPONSE_NAME_ACTIONS, name, action)
    return action


def response_name_action(name: bytes) -> int:
    """The action for a response header name as it arrived: RESP_FORWARD at once for a length
    no name in RESPONSE_ACTIONS has (RESPONSE_ACTION_LENGTHS), else the remembered one
    (RESPONSE_NAME_ACTIONS), response_action's for a name not seen yet."""
    lengths = RESPONSE_ACTION_LENGTHS
    size = len(name)
    if size < 256 and not lengths[size]:
        return RESP_FORWARD
    known = RESPONSE_NAME_ACTIONS
    action = known.get(name)
    return response_action(name) if action is None else action


def _remember(table: dict[bytes, int], name: bytes, action: int) -> None:
    if len(table) >= NAME_TABLE_SIZE:
        table.clear()
    table[name] = action


# Trailer fields that must never be forwarded (RFC 9110 6.5.1): framing,
# routing and hop-by-hop fields would change the meaning of the message.
FORBIDDEN_TRAILERS = HOP_BY_HOP | frozenset(
    (b"content-length", b"host", b"content-type", b"content-encoding", b"content-range",
     b"authorization", b"set-cookie", b"cache-control", b"expect", b"max-forwards",
     b"pragma", b"range")
)


def connection_tokens(value: bytes) -> list[bytes]:
    """The lowercased option names listed in a Connection header."""
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


# What connection_options answers for the usual values, made once.
_JUST_CLOSE = (True, False, None)
_JUST_KEEP_ALIVE = (False, True, None)


def connection_options(value: bytes) -> tuple[bool, bool, set[bytes] | None]:
    """What one Connection header says: close, keep-alive, and the other names it lists (header
    names that are hop-by-hop too), or None. The usual values, as they are usually spelled, are
    answered without a token list (a request or response of most clients and origins has one)."""
    if value == b"close":
        return _JUST_CLOSE
    if value == b"keep-alive":
        return _JUST_KEEP_ALIVE
    tokens = connection_tokens(value)
    named = {t for t in tokens if t not in (b"close", b"keep-alive")}
    return b"close" in tokens, b"keep-alive" in tokens, named or None


def upgrade_protocols(value: bytes) -> list[bytes]:
    """The protocol names (before any "/version") an Upgrade header lists, lowercased."""
    return [token.partition(b"/")[0] for token in connection_tokens(value)]


def remove_named(headers: list[tuple[bytes, bytes]], names: set[bytes]) -> list[tuple[bytes, bytes]]:
    """Drop headers a Connection header named (they are hop-by-hop too)."""
    return [(name, value) for name, value in headers if name.lower() not in names]


def serialize_fields(lines: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
    """Append the pieces of a "Name: value\\r\\n" line for each header, for one b"".join.

    Four pieces, not one line: the join copies each piece once, where concatenating a line
    makes three new bytes objects per header first. Compiled (headers.pxd), the callers on
    the request path call it in C and the extend of a literal tuple is four appends.
    """
    for name, value in headers:
        lines.extend((name, b": ", value, b"\r\n"))


# "HTTP/1.1 <status> " for every three-digit status, indexed by status - 100: a response's
# status line starts without a formatting per response.
STATUS_LINE_STARTS = tuple(b"HTTP/1.1 %d " % status for status in range(100, 1000))


def chunk_header(size: int) -> bytes:
    return b"%x\r\n" % size


def last_chunk(trailers: list[tuple[bytes, bytes]] | None) -> bytes:
    """The zero-size chunk that ends a chunked body, with any trailer fields."""
    if not trailers:
        return b"0\r\n\r\n"
    lines = [b"0\r\n"]
    serialize_fields(lines, trailers)
    lines.append(b"\r\n")
    return b"".join(lines)


def allowed_trailer(name: bytes) -> bool:
    return name.lower() not in FORBIDDEN_TRAILERS


def allowed_request_trailer(name: bytes) -> bool:
    """Whether a client's trailer field may go to the backend.

    Besides the forbidden fields, never a header the proxy vouches for (X-SSL-*, X-Forwarded-*,
    X-Request-Id, Via): backends that merge trailers into the headers would take a client's
    `X-SSL-Subject` trailer for the proxy's. Trailers are rare, so every spelling is folded here.
    """
    canonical = name.lower().replace(b"_", b"-")
    return not (canonical in FORBIDDEN_TRAILERS or canonical in PROXY_HEADERS
                or canonical.startswith(b"x-ssl-"))
