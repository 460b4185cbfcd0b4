"""Proxy-generated responses, prebuilt once at import.

Each failure is classed by who is to blame, and that class alone decides the
status (the Pingora fail_to_proxy habit): the data path raises or reports a
ProxyFailure, and nothing else picks a status code.
"""

from __future__ import annotations

from http import HTTPStatus

RETRY_AFTER_SECONDS = 1


class ProxyFailure(Exception):
    """A request that cannot be proxied; `status` is what the client is told."""

    status = 502
    # True for failures that come in floods (every request queued behind a hung backend
    # expires within one pending_timeout): their error-log lines are sampled
    # (appliance/observe/sampled.py), and a metric counts every one.
    sampled = False

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.__class__.__name__)
        self.detail = detail


class ClientFault(ProxyFailure):
    """The client sent something we refuse; the connection closes afterwards."""

    status = 400


class HeadTooLarge(ClientFault):
    status = 431


class BodyTooLarge(ClientFault):
    status = 413


class ExpectationFailed(ClientFault):
    status = 417


class ClientTimeout(ClientFault):
    status = 408


class UnsupportedVersion(ClientFault):
    status = 505


class MisdirectedRequest(ClientFault):
    """TLS: the Host names another vhost than the one the handshake was for (SNI)."""

    status = 421


class CertificateRequired(ClientFault):
    """TLS: the vhost requires a verified client certificate and the session has none."""

    status = 403


class NoRoute(ProxyFailure):
    status = 404


class MethodNotAllowed(ProxyFailure):
    status = 405

    def __init__(self, allowed: set[bytes]) -> None:
        super().__init__("method not allowed")
        self.allowed = b", ".join(sorted(allowed))


class BackendRefused(ProxyFailure):
    """Connect refused, or the connection reset / closed before a response."""

    status = 502


class BackendTimeout(ProxyFailure):
    status = 504


class BackendUnavailable(ProxyFailure):
    """No server can take the request now: pending queue full or timed out, all DOWN."""

    status = 503


class PendingTimeout(BackendUnavailable):
    """Waited pending_timeout in a pending queue for a connection (rproxyd_pending_timeouts_total)."""

    sampled = True


class BadBackendResponse(ProxyFailure):
    """The backend answered with something that is not valid HTTP/1.x."""

    status = 502


class PhaseFailed(ProxyFailure):
    """An operator's phase raised, or returned what its contract does not allow."""

    status = 500

    def __init__(self, phase: str, detail: str = "") -> None:
        super().__init__(detail or f"phase {phase} failed")
        self.phase = phase


def _build(status: int, keep_alive: bool, extra: str = "") -> bytes:
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Server: rproxyd",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
    ]
    if status == 503:
        lines.append(f"Retry-After: {RETRY_AFTER_SECONDS}")
    if extra:
        lines.append(extra)
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_STATUSES = (400, 403, 404, 405, 408, 413, 417, 421, 431, 500, 502, 503, 504, 505)
_RESPONSES = {(s, ka): _build(s, ka) for s in _STATUSES for ka in (True, False)}
_HEAD_RESPONSES = {key: raw[: raw.index(b"\r\n\r\n") + 4] for key, raw in _RESPONSES.items()}

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(failure: ProxyFailure, keep_alive: bool, head_only: bool = False) -> bytes:
    """The full bytes of a proxy-generated error response."""
    if isinstance(failure, MethodNotAllowed):
        raw = _build(405, keep_alive, f"Allow: {failure.allowed.decode()}")
        return raw[: raw.index(b"\r\n\r\n") + 4] if head_only else raw
    table = _HEAD_RESPONSES if head_only else _RESPONSES
    return table[(failure.status, keep_alive)]
