"""gRPC pieces the proxy needs: the request test, `grpc-timeout`, and errors as gRPC statuses.

How the h2 stream uses them (issue 17, item 4):

    from appliance.http import grpc

    # once per request head, from its content-type (None when absent):
    is_grpc = grpc.is_grpc(content_type)
    # if is_grpc and the head has grpc-timeout: bound the upstream wait by it
    try:
        wait = grpc.parse_timeout(value, cap=backend_read_timeout)
    except grpc.MalformedTimeout:
        ...  # answer grpc.failure_headers(ClientFault("malformed grpc-timeout")): INTERNAL
    # on a ProxyFailure for a gRPC request, instead of the HTML/text error response:
    session.submit_response(stream_id, 200, grpc.failure_headers(failure), end_stream=True)

`failure_headers` is a trailers-only response (gRPC over HTTP/2: "Trailers-Only"): HTTP status
200 and one HEADERS frame that ends the stream with `content-type`, `grpc-status` and
`grpc-message`. Each failure class's list is built once and then shared, so the error path
allocates nothing per request; callers must not mutate it.

Statuses: a failure whose kind the proxy knows gets the gRPC status that says what happened
(a backend that is down or refused: UNAVAILABLE, which clients may retry; a backend timeout:
DEADLINE_EXCEEDED, which they do not, since the call may have run); any other failure, and a
response a phase generates itself, maps its HTTP status by gRPC's "HTTP to gRPC Status Code
Mapping" (grpc/grpc doc/http-grpc-status-mapping.md), the table gRPC clients apply to a
response without grpc-status, so a client sees what it would see from any other proxy.
"""

from __future__ import annotations

from http import HTTPStatus

from .errors import (
    BackendRefused,
    BackendTimeout,
    BackendUnavailable,
    BadBackendResponse,
    CertificateRequired,
    NoRoute,
    PhaseFailed,
    ProxyFailure,
)

# gRPC status codes (grpc/grpc doc/statuscodes.md) the proxy generates.
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# doc/http-grpc-status-mapping.md; every other status is UNKNOWN. 429 is UNAVAILABLE there
# (Envoy's default too), so a rate-limited client backs off and retries.
HTTP_TO_GRPC = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}

# Failure kinds whose meaning is more precise than their HTTP status; the most derived class
# present in a failure's MRO wins.
FAILURE_TO_GRPC: dict[type[ProxyFailure], int] = {
    BackendRefused: UNAVAILABLE,
    BackendUnavailable: UNAVAILABLE,  # all servers down, pending queue full or timed out
    BackendTimeout: DEADLINE_EXCEEDED,
    BadBackendResponse: INTERNAL,  # the backend broke the protocol: retrying will not help
    NoRoute: UNIMPLEMENTED,
    # No client certificate is missing credentials, not a refusal of valid ones.
    CertificateRequired: UNAUTHENTICATED,
    PhaseFailed: INTERNAL,
}

CONTENT_TYPE = b"application/grpc"

# The longest grpc-timeout the proxy enforces itself (seconds). A timer wheel slot lives until
# its time even when emptied (appliance/timerwheel.py), so deadlines years ahead, one per call,
# would pile up; a longer deadline is left to the client, which enforces its own and cancels
# the call (RST_STREAM, passed on to the backend) when it passes.
MAX_DEADLINE = 3600.0

# grpc-timeout: TimeoutValue (1 to 8 ASCII digits) then TimeoutUnit, in seconds.
_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


class MalformedTimeout(ValueError):
    """A grpc-timeout value that is not 1 to 8 digits followed by one of H M S m u n."""


def is_grpc(content_type: bytes | None) -> bool:
    """True for a gRPC request's content-type: `application/grpc`, optionally `+codec`
    (`application/grpc+proto`, `+json`, ...) or parameters; not gRPC-Web (`application/grpc-web`),
    a different protocol."""
    if content_type is None or len(content_type) < 16:
        return False
    ct = content_type.lower()
    return ct.startswith(CONTENT_TYPE) and (len(ct) == 16 or ct[16] in b"+; ")


def parse_timeout(value: bytes, cap: float) -> float:
    """A grpc-timeout value in seconds, at most `cap` (the wait the proxy would allow anyway: a
    client's deadline may shorten the upstream wait, never lengthen it). 0 is a deadline that
    has passed. Raises MalformedTimeout for anything else than the gRPC grammar."""
    if not 2 <= len(value) <= 9:
        raise MalformedTimeout(f"grpc-timeout {value[:16]!r}: 1 to 8 digits and a unit")
    unit = _UNITS.get(value[-1])
    digits = value[:-1]
    # bytes.isdigit() is ASCII-only: no signs, spaces, underscores or other scripts' digits.
    if unit is None or not digits.isdigit():
        raise MalformedTimeout(f"grpc-timeout {value!r}: 1 to 8 digits and one of H M S m u n")
    return min(int(digits) * unit, cap)


_PERCENT_ENCODED = frozenset(range(0x20, 0x7F)) - {ord("%")}


def encode_message(text: str) -> bytes:
    """grpc-message's value: UTF-8, with every byte outside space..~ and every '%' as %XX
    (gRPC over HTTP/2, "Percent-Encoded")."""
    return b"".join(bytes((b,)) if b in _PERCENT_ENCODED else b"%%%02X" % b for b in text.encode())


def trailers_only(status: int, message: str = "") -> list[tuple[bytes, bytes]]:
    """The headers of a trailers-only gRPC response (sent with HTTP status 200, ending the stream)."""
    headers = [(b"content-type", CONTENT_TYPE), (b"grpc-status", str(status).encode())]
    if message:
        headers.append((b"grpc-message", encode_message(message)))
    return headers


def status_for_http(http_status: int) -> int:
    """The gRPC status for an HTTP status (a response a phase generated, say), by gRPC's mapping."""
    return HTTP_TO_GRPC.get(http_status, UNKNOWN)


def status_for_failure(failure: ProxyFailure) -> int:
    """The gRPC status for a failure the proxy generates: by its kind, else by its HTTP status."""
    for cls in type(failure).__mro__:
        if cls in FAILURE_TO_GRPC:
            return FAILURE_TO_GRPC[cls]
    return status_for_http(failure.status)


def has_status(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response's headers carry grpc-status: a phase's answer that speaks gRPC itself."""
    return any(name.lower() == b"grpc-status" for name, _ in headers)


_BY_HTTP_STATUS: dict[int, list[tuple[bytes, bytes]]] = {}


def status_headers(http_status: int) -> list[tuple[bytes, bytes]]:
    """The trailers-only response standing for an HTTP status (a phase's own answer to a gRPC
    request), built once per status; callers must not mutate it."""
    headers = _BY_HTTP_STATUS.get(http_status)
    if headers is None:
        try:
            phrase = HTTPStatus(http_status).phrase
        except ValueError:  # a status Python has no name for
            phrase = f"HTTP status {http_status}"
        headers = _BY_HTTP_STATUS[http_status] = trailers_only(status_for_http(http_status), phrase)
    return headers


_BY_KIND: dict[type[ProxyFailure], list[tuple[bytes, bytes]]] = {}


def failure_headers(failure: ProxyFailure) -> list[tuple[bytes, bytes]]:
    """The trailers-only response for a failure, built once per failure class. The message is the
    status's reason phrase ("Service Unavailable"), never the failure's detail, which may name
    servers and addresses the client has no business seeing."""
    kind = type(failure)
    headers = _BY_KIND.get(kind)
    if headers is None:
        headers = trailers_only(status_for_failure(failure), HTTPStatus(failure.status).phrase)
        _BY_KIND[kind] = headers
    return headers


def failure_trailers(failure: ProxyFailure) -> list[tuple[bytes, bytes]]:
    """grpc-status and grpc-message for a failure that ends a call whose response had started
    (its content-type went out with the head): the trailers-only list less its first field."""
    return failure_headers(failure)[1:]
