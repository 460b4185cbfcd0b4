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

# Header names already found to be tokens: name -> (the name as sent, its lowercase lookup
# key, whether it is an X-SSL-* name). Phases use a few constant names, so each is checked
# and encoded once per worker instead of on every edit and lookup; bounded (cleared when
# full) for a phase that makes names up per request.
_Name = tuple[bytes, bytes, bool]
_NAMES: dict[str, _Name] = {}
_NAMES_MAX = 1024

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

    # Lookups compare lengths before lowercasing a field: most fields differ in length
    # from the name asked for, and lowercasing makes a bytes object per field.

    def get(self, name: str, default: str | None = None) -> str | None:
        key = _key(name)
        size = len(key)
        for field, value in self._raw:
            if len(field) == size and field.lower() == key:
                return value.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        key = _key(name)
        size = len(key)
        return [value.decode("latin-1") for field, value in self._raw
                if len(field) == size and field.lower() == key]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)
        size = len(key)
        return any(len(field) == size and field.lower() == key for field, _ in self._raw)

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
        field, key, _ = self._check(name)
        pair = (field, _encode_value(name, value))
        raw = self._raw  # edited in place: the proxy holds this list
        size = len(key)
        for old in raw:
            if len(old[0]) == size and old[0].lower() == key:
                first = raw.index(old)  # an equal pair before it would have matched first
                raw[first] = pair
                raw[first + 1:] = [kept for kept in raw[first + 1:]
                                   if len(kept[0]) != size or kept[0].lower() != key]
                break
        else:
            raw.append(pair)
        self.edited = True

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping those of the same name."""
        field, _, _ = self._check(name)
        self._raw.append((field, _encode_value(name, value)))
        self.edited = True

    def remove(self, name: str) -> None:
        """Drop every field of `name` (nothing happens if there is none)."""
        _, key, _ = self._check(name)
        size = len(key)
        self._raw[:] = [pair for pair in self._raw if len(pair[0]) != size or pair[0].lower() != key]
        self.edited = True

    def rebind(self, raw: RawHeaders, writable: bool) -> None:
        """Point this view at another list (the request's next upstream try)."""
        self._raw = raw
        self.writable = writable

    def _check(self, name: str) -> _Name:
        """The name's encodings, once it is known to be a token this view may edit."""
        if not self.writable:
            raise ValueError("these headers are read-only in this phase (request headers change in "
                             "upstream_request_filter, response headers in response_filter)")
        known = _NAMES.get(name) if type(name) is str else None
        if known is None:
            known = _token(name)
        if known[1] in self._owned or (known[2] and self._ssl_owned):
            raise ValueError(f"{name} is managed by the proxy; a phase cannot set or remove it")
        return known


def _token(name: object) -> _Name:
    """A header name checked to be a token (ValueError if not), remembered in _NAMES."""
    if not isinstance(name, str) or not TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}")
    field = name.encode("ascii")
    key = field.lower()
    known = (field, key, key[:6] in hdr.SSL_PREFIXES)
    if type(name) is str:  # a subclass could compare equal to a name it does not spell
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[name] = known
    return known


def _encode_value(name: str, value: str) -> bytes:
    """A header value as sent: latin-1 text without CR, LF or NUL (so it cannot split the head)."""
    if not isinstance(value, str):
        raise TypeError(f"header {name}: expected a str value, got {type(value).__name__}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"header {name}: a value may not contain CR, LF or NUL")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name}: a value must be latin-1 text (percent- or "
                         "base64-encode anything else)") from None


def _key(name: str) -> bytes:
    """The lowercase bytes a lookup compares fields with (a token's remembered in _NAMES)."""
    if type(name) is str:
        known = _NAMES.get(name)
        if known is not None:
            return known[1]
        if TOKEN.match(name):
            return _token(name)[1]
    return name.lower().encode("latin-1", "replace")  # not a token (or a str subclass): made each time


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
    return [(checker._check(name)[0], _encode_value(name, value)) for name, value in pairs]
