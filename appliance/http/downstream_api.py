"""The seam between the two sides: what the backend side may call on a downstream.

A downstream is whatever sent the request and gets its response: today the HTTP/1
client connection (appliance/http/downstream.py); an HTTP/2 stream or a tunnel can
implement the same interface later. The backend side (appliance/upstream/) hands
over parsed facts (status, reason, the header list, the backend's version and Via,
how the body is delimited) and body bytes; the downstream frames them for its own
peer (status line, Via, chunked or not, Connection, keep-alive) and flow-controls its
side. Nothing on the backend side touches a downstream's fields or transport.

Every call takes effect at once, from inside the backend's Protocol callbacks: no
coroutine, no per-call allocation beyond the bytes written.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from appliance.http.errors import ProxyFailure
    from appliance.http.exchange import Exchange
    from appliance.worker import WorkerContext

# How the backend delimits a response body (the downstream picks its own framing from it).
BODY_NONE = 0  # no body: HEAD, 204, 304
BODY_LENGTH = 1  # Content-Length (the header is in the list)
BODY_CHUNKED = 2  # chunked from the backend: length unknown, ends with finish()
BODY_UNTIL_CLOSE = 3  # ends when the backend closes, then finish()

# Why the backend side asks a downstream to stop reading from its peer.
PAUSE_UPSTREAM_FULL = 1  # the backend is not keeping up with the request body
PAUSE_BUFFER_FULL = 4  # body buffered while waiting for a backend connection (resumed once sent)

Fields = list[tuple[bytes, bytes]]


class Downstream(Protocol):
    """What the backend side may call on the side that sent the request."""

    # Who sent the request, read by the request head (appliance/http/request_head.py)
    # and the balancer's client-address hash.
    ctx: WorkerContext
    peer_ip: bytes
    trusted: bool  # a trusted proxy: its X-Forwarded-For and X-Real-IP are kept
    forwarded_tail: bytes  # "<peer>\r\nX-Forwarded-Proto: <proto>\r\n" and any X-SSL-* lines
    write_paused: bool  # the peer is not reading: a new backend read starts paused

    def send_continue(self, exchange: Exchange) -> None:
        """The backend is ready for the request body: let a client waiting on Expect send it."""

    def informational(self, exchange: Exchange, status: int, reason: bytes, headers: Fields) -> None:
        """A 1xx response (never 101) arrived before the final one."""

    def start_response(self, exchange: Exchange, status: int, reason: bytes, headers: Fields,
                       version: str, via: bytes | None, body: int) -> None:
        """The final response head: `version` and `via` as the backend sent them, `body` a BODY_* mode."""

    def send_body(self, data: bytes) -> None:
        """Response body bytes, as the backend sent them (unchunked)."""

    def flush(self) -> None:
        """The end of one backend read: send anything held back to join the next bytes."""

    def finish(self, exchange: Exchange, trailers: Fields | None) -> None:
        """The response is complete (with the chunked body's trailers, if any)."""

    def fail(self, exchange: Exchange, failure: ProxyFailure) -> None:
        """Answer with an error response, or cut the response if it has started."""

    def redirect(self, exchange: Exchange, target: bytes) -> None:
        """The backend asked for an internal redirect: route the request again to `target`."""

    def pause_reading(self, reason: int) -> None:
        """Stop reading from the peer for `reason` (a PAUSE_* flag) until resume_reading(reason)."""

    def resume_reading(self, reason: int) -> None: ...

    def response_splice_target(self) -> asyncio.Transport | None:
        """The raw transport a response body may be spliced to now, or None (TLS, framing, queued bytes)."""

    def response_spliced(self, size: int) -> None:
        """A splice gave `size` body bytes to the peer."""

    def response_splice_blocked(self, blocked: bool) -> None:
        """A splice waits for the peer to take bytes (the send timeout runs), or no longer does."""

    def close(self, force: bool = False) -> None:
        """End this downstream (force: at once, dropping what is queued for the peer)."""
