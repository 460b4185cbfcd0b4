"""The header view phases see: case-insensitive, ordered, multi-valued, str in the API.

It is a window on the proxy's own list of (name, value) byte pairs, not a copy: nothing
is decoded until a phase asks for a value, and an edit changes that list in place, so
the proxy sends what the phase left without converting anything back. Names keep the
case they were given (as nginx forwards them); lookups ignore case.

Values are text as HTTP defines it: ISO-8859-1 (latin-1), so every byte a client sent
round-trips unchanged. A name must be an RFC 9110 token and a value may not hold CR,
LF or NUL, so an edit can never split a header or inject another.

Some names belong to the proxy, not to phases: framing (Content-Length,
Transfer-Encoding), hop-by-hop headers, and those the proxy sets itself
(X-Forwarded-*, X-Real-IP, X-Request-Id, Via, X-SSL-*). An edit of one of them raises
ValueError at the line that tried, rather than being dropped unseen later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from appliance.http import headers as hdr

RawHeaders = list[tuple[bytes, bytes]]

# An RFC 9110 token: what a header name (and a method) may be.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\0]")

# Request headers a phase may not set or remove: every name the parser handles itself,
# except Host, which a phase may rewrite (routing has already used the client's).
REQUEST_OWNED = frozenset(name for name, action in hdr.REQUEST_ACTIONS.items() if action != hdr.REQ_HOST)
# Response headers the proxy frames or sets itself (Via, and the hop-by-hop ones).
RESPONSE_OWNED = frozenset(hdr.RESPONSE_ACTIONS)


class Headers:
    """Ordered, case-insensitive, multi-valued headers over a list of byte pairs.

    `get(name)` gives the first value, `get_all(name)` every value in order;
    `set` replaces all fields of a name (keeping the first one's position), `add`
    appends one, `remove` drops all. `name in headers`, `len(headers)`, iteration
    (the name of each field, in order) and `items()` (name, value pairs) read it.
    """

    __slots__ = ("_owned", "_raw", "_ssl_owned", "edited", "writable")

    def __init__(self, raw: RawHeaders | None = None, owned: frozenset[bytes] = frozenset(),
                 ssl_owned: bool = False, writable: bool = True) -> None:
        self._raw: RawHeaders = [] if raw is None else raw
        self._owned = owned
        self._ssl_owned = ssl_owned
        self.writable = writable  # views turn this on only in the phase that may edit
        self.edited = False

    @property
    def raw(self) -> RawHeaders:
        """The proxy's list of (name, value) byte pairs, with every edit made so far."""
        return self._raw

    def get(self, name: str, default: str | None = None) -> str | None:
        key = _key(name)
        for field, value in self._raw:
            if field.lower() == key:
                return value.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = _key(name)
        return [value.decode("latin-1") for field, value in self._raw if field.lower() == key]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)
        return any(field.lower() == key for field, _ in self._raw)

    def __iter__(self) -> Iterator[str]:
        return (field.decode("latin-1") for field, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def items(self) -> list[tuple[str, str]]:
        return [(field.decode("latin-1"), value.decode("latin-1")) for field, value in self._raw]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    def set(self, name: str, value: str) -> None:
        """Replace every field of `name` by one with `value`, where the first one was (else at the end)."""
        field, encoded = self._encode(name, value)
        key = field.lower()
        kept: RawHeaders = []
        placed = False
        for pair in self._raw:
            if pair[0].lower() != key:
                kept.append(pair)
            elif not placed:
                kept.append((field, encoded))
                placed = True
        if not placed:
            kept.append((field, encoded))
        self._raw[:] = kept  # in place: the proxy holds this list
        self.edited = True

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping those of the same name."""
        self._raw.append(self._encode(name, value))
        self.edited = True

    def remove(self, name: str) -> None:
        """Drop every field of `name` (nothing happens if there is none)."""
        key = self._check(name)
        self._raw[:] = [pair for pair in self._raw if pair[0].lower() != key]
        self.edited = True

    def _check(self, name: str) -> bytes:
        """The lowercased name, once it is known to be a token this view may edit."""
        if not self.writable:
            raise ValueError("these headers are read-only in this phase (request headers change in "
                             "upstream_request_filter, response headers in response_filter)")
        if not isinstance(name, str) or not TOKEN.match(name):
            raise ValueError(f"invalid header name {name!r}")
        key = name.lower().encode("ascii")
        if key in self._owned or (self._ssl_owned and key[:6] in hdr.SSL_PREFIXES):
            raise ValueError(f"{name} is managed by the proxy; a phase cannot set or remove it")
        return key

    def _encode(self, name: str, value: str) -> tuple[bytes, bytes]:
        self._check(name)
        if not isinstance(value, str):
            raise TypeError(f"header {name}: expected a str value, got {type(value).__name__}")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise ValueError(f"header {name}: a value may not contain CR, LF or NUL")
        try:
            return name.encode("ascii"), value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {name}: a value must be latin-1 text (percent- or "
                             "base64-encode anything else)") from None


def _key(name: str) -> bytes:
    return name.lower().encode("latin-1", "replace")


def raw_from(headers: Headers | Iterable[tuple[str, str]] | dict[str, str] | None,
             owned: frozenset[bytes]) -> RawHeaders:
    """A raw list from what an operator passed as headers, each field checked as `set` checks it."""
    if headers is None:
        return []
    if isinstance(headers, Headers):
        pairs: Iterable[tuple[str, str]] = headers.items()
    elif isinstance(headers, dict):
        pairs = headers.items()
    else:
        pairs = headers
    checker = Headers(owned=owned)
    return [checker._encode(name, value) for name, value in pairs]
