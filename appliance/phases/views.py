"""The request and response objects phases see, built over the proxy's raw bytes.

A view costs one small object per request and converts nothing up front: the method,
path, query and host are decoded when a phase reads them, the Headers view is made when
a phase first touches `.headers`. The proxy reads edits back as bytes (`raw_method`,
`raw_target`, `raw_headers`, `status`), so a route whose phases only look pays for the
look and nothing else.

Each view is writable only in the phase the API documents for edits
(upstream_request_filter for the request, response_filter for the response): the
wiring sets `writable` around that call. Anywhere else an assignment raises, at the
operator's line, instead of being silently lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from appliance.phases.headers import REQUEST_OWNED, RESPONSE_OWNED, TOKEN, Headers, RawHeaders

# A path or query as it goes on the request line: visible ASCII, no space, no fragment.
_PATH = re.compile(r"/[!-~]*\Z")
_QUERY = re.compile(r"[!-~]*\Z")
# Methods whose response framing differs (HEAD: no body; CONNECT: a tunnel).
_FRAMING_METHODS = frozenset(("HEAD", "CONNECT"))
# Statuses whose response has no body, so a change to or from them breaks the framing.
_BODYLESS = frozenset((204, 304))


def _read_only(what: str, phase: str) -> ValueError:
    return ValueError(f"{what} can only be changed in {phase}")


class _MessageView:
    """What request and response views share: raw headers, their lazy Headers view, `writable`."""

    __slots__ = ("_headers", "_raw_headers", "_writable")

    _owned = frozenset()  # the header names the proxy owns on this kind of message (bytes)
    _ssl_owned = False  # whether X-SSL-* (every spelling) is the proxy's too

    def __init__(self, headers: RawHeaders) -> None:
        self._raw_headers = headers
        self._headers: Headers | None = None
        self._writable = False

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers(self._raw_headers, self._owned, self._ssl_owned, self._writable)
        return headers

    # -- what the proxy uses

    @property
    def writable(self) -> bool:
        return self._writable

    @writable.setter
    def writable(self, on: bool) -> None:
        self._writable = on
        if self._headers is not None:
            self._headers.writable = on

    @property
    def raw_headers(self) -> RawHeaders:
        """The header list, edited in place by phases (the same list the view was given)."""
        return self._raw_headers


class Request(_MessageView):
    """The client's request as phases see it.

    Read anywhere: `method`, `path` (without the query), `query` (without the `?`, ""
    if none), `host` (the Host the request was routed by, with its port if the client
    sent one; "" if none), `client_ip`, `request_id`, `upgrade` (the client's Upgrade
    header, "" if none), `headers` (see Headers). In upstream_request_filter `method`,
    `path`, `query` and `headers` may be assigned or edited; what goes up is what they hold.
    """

    __slots__ = ("_client_ip", "_host", "_method", "_path", "_query", "_request_id", "_target", "_upgrade")

    _owned = REQUEST_OWNED
    _ssl_owned = True

    def __init__(self, method: bytes, target: bytes, host: bytes | None, client_ip: bytes | str,
                 headers: RawHeaders, request_id: str | Callable[[], str],
                 upgrade: bytes | None = None) -> None:
        # _MessageView's fields set here rather than through super().__init__: one call
        # less on every request with phases.
        self._raw_headers = headers
        self._headers = None
        self._writable = False
        self._method = method
        self._target = target
        self._host = host
        self._client_ip = client_ip
        # A request id may be made only when something first needs it (observe/request_id.py).
        self._request_id = request_id
        self._upgrade = upgrade
        self._path: str | None = None
        self._query: str | None = None

    # -- what phases read and write

    @property
    def method(self) -> str:
        return self._method.decode("ascii")

    @method.setter
    def method(self, value: str) -> None:
        self._check_writable("req.method")
        if not isinstance(value, str) or not TOKEN.match(value):
            raise ValueError(f"invalid method {value!r}")
        old = self.method
        if value != old and (value in _FRAMING_METHODS or old in _FRAMING_METHODS):
            raise ValueError(f"a phase cannot change {old} into {value}: the response framing "
                             "depends on it")
        self._method = value.encode("ascii")

    @property
    def path(self) -> str:
        if self._path is None:
            self._split()
        return self._path  # type: ignore[return-value]

    @path.setter
    def path(self, value: str) -> None:
        self._check_writable("req.path")
        if not isinstance(value, str) or not _PATH.match(value) or "?" in value or "#" in value:
            raise ValueError(f"invalid path {value!r}: expected visible ASCII starting with /, without "
                             "? or # (percent-encode anything else; set the query with req.query)")
        if self._query is None:
            self._split()  # keep the old query
        self._path = value
        self._join()

    @property
    def query(self) -> str:
        if self._query is None:
            self._split()
        return self._query  # type: ignore[return-value]

    @query.setter
    def query(self, value: str) -> None:
        self._check_writable("req.query")
        if isinstance(value, str) and value.startswith("?"):
            value = value[1:]
        if not isinstance(value, str) or not _QUERY.match(value) or "#" in value:
            raise ValueError(f"invalid query {value!r}: expected visible ASCII without # "
                             "(percent-encode anything else)")
        if self._path is None:
            self._split()  # keep the old path
        self._query = value
        self._join()

    @property
    def host(self) -> str:
        return "" if self._host is None else self._host.decode("latin-1")

    @property
    def client_ip(self) -> str:
        ip = self._client_ip
        return ip if isinstance(ip, str) else ip.decode("ascii")

    @property
    def request_id(self) -> str:
        rid = self._request_id
        return rid if isinstance(rid, str) else rid()

    @property
    def upgrade(self) -> str:
        """The protocols the client asked to switch to (its Upgrade header, as "websocket"), "" if none.

        The Upgrade header itself is the proxy's (hop-by-hop): whether it goes to the backend
        depends on the rule's `upgrade` list, not on a phase."""
        return "" if self._upgrade is None else self._upgrade.decode("latin-1")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._target.decode('latin-1')} host={self.host!r}>"

    # -- what the proxy uses

    @property
    def raw_method(self) -> bytes:
        return self._method

    @property
    def raw_target(self) -> bytes:
        """The request target that goes up: path and query as the phases left them."""
        return self._target

    def rebase(self, method: bytes, target: bytes, headers: RawHeaders) -> None:
        """Start an upstream_request_filter try from the request the built-ins would send, writable.

        A Headers view already made (by request_filter, or an earlier try) is pointed at
        the new list rather than made again: `req.headers` is one object for the request's life.
        """
        self._method = method
        self._target = target
        self._path = self._query = None
        self._raw_headers = headers
        self._writable = True
        view = self._headers
        if view is not None:
            view.rebind(headers, True)

    def sent(self) -> tuple[bytes, bytes, RawHeaders]:
        """End the upstream_request_filter try: read-only again; the method, target and headers to send."""
        self._writable = False
        view = self._headers
        if view is not None:
            view.writable = False
        return self._method, self._target, self._raw_headers

    def _check_writable(self, what: str) -> None:
        if not self._writable:
            raise _read_only(what, "upstream_request_filter")

    def _split(self) -> None:
        path, _, query = self._target.decode("latin-1").partition("?")
        self._path, self._query = path, query

    def _join(self) -> None:
        text = self._path if not self._query else f"{self._path}?{self._query}"
        self._target = text.encode("ascii")  # type: ignore[union-attr]


class ResponseHead(_MessageView):
    """The response head as phases see it: `status` and `headers`.

    Editable in response_filter (before it goes to the client); read-only in logging,
    where it is what the client got. The status may change within the statuses that
    carry a body: to or from 204 or 304 would change the framing, so that raises.
    """

    __slots__ = ("_status",)

    _owned = RESPONSE_OWNED

    def __init__(self, status: int, headers: RawHeaders) -> None:
        super().__init__(headers)
        self._status = status

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        if not self._writable:
            raise _read_only("resp.status", "response_filter")
        if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
            raise ValueError(f"invalid status {value!r}: expected an integer from 200 to 599")
        if value != self._status and (value in _BODYLESS or self._status in _BODYLESS):
            raise ValueError(f"a phase cannot change status {self._status} into {value}: whether the "
                             "response has a body depends on it")
        self._status = value

    def __repr__(self) -> str:
        return f"<ResponseHead {self._status}>"
