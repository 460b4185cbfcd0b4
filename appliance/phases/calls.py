"""The request path's calls into an operator's phases: views made, results checked, failures contained.

The client side (appliance/http/downstream.py) and the request head
(appliance/http/request_head.py) call these only where the exchange's PhaseDispatch
holds the phase (`is not None`), so a route without operator phases never gets here.
An exception escaping a phase, or a result its contract does not allow, is logged
with its traceback and the request id, counted in /metrics per phase
(rproxyd_phase_errors_total), and turned into errors.PhaseFailed (500): the worker
serves on.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

from appliance.http import headers as hdr
from appliance.http.errors import PhaseFailed, ProxyFailure
from appliance.observe.errorlog import about
from appliance.phases import PHASES, Request, Response, ResponseHead
from appliance.phases.dispatch import response_or_none
from appliance.phases.headers import RawHeaders
from appliance.phases.loader import describe

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange

log = logging.getLogger("rproxyd.phases")

# Offset of each phase's cell in the rproxyd_phase_errors_total block (appliance/observe/metrics.py).
PHASE_INDEX = {name: index for index, name in enumerate(PHASES)}

_NO_LENGTH = frozenset((204, 304))


def failed(exchange: Exchange, phase: str, exc: BaseException) -> PhaseFailed:
    """Log and count a phase's failure; the ProxyFailure the request is answered with."""
    log.error("phase %s of %s failed: %s", phase, exchange.phases.name, describe(exc), exc_info=exc,
              extra=about(exchange))
    exchange.client.ctx.observer.phase_error(PHASE_INDEX[phase])
    return PhaseFailed(phase, f"phase {phase} failed: {describe(exc)}")


def request_view(exchange: Exchange) -> Request:
    """The exchange's Request view, made on first use (then shared by every phase)."""
    req = exchange.req
    if req is None:
        # The id is made only if a phase reads it: the view holds the exchange's bound method.
        req = exchange.req = Request(exchange.method, exchange.target, exchange.host, exchange.client.peer_ip,
                                     exchange.headers, exchange.request_id_text, exchange.upgrade)
    return req


def upstream_request(exchange: Exchange, headers: RawHeaders) -> tuple[bytes, bytes, RawHeaders] | None:
    """Run upstream_request_filter on what the built-ins would send; (method, target, headers) to send.

    Each try starts from the built-ins' request (the route's rewrite and header policy),
    so a phase that adds a header adds it once however often the request is retried.
    None if the phase failed: exchange.failure holds the PhaseFailed to answer with.
    """
    req = exchange.req
    if req is None:
        req = request_view(exchange)
    req.rebase(exchange.method, exchange.target, list(headers))  # a copy: the next try starts anew
    try:
        exchange.phases.upstream_request_filter(req, exchange.phase_ctx)
    except Exception as exc:
        exchange.failure = failed(exchange, "upstream_request_filter", exc)
        return None
    finally:
        sent = req.sent()
    return sent


def response_filter(exchange: Exchange, resp: ResponseHead) -> PhaseFailed | None:
    """Run response_filter on the head about to go to the client; the failure, if it failed."""
    resp.writable = True
    try:
        exchange.phases.response_filter(request_view(exchange), resp, exchange.phase_ctx)
    except Exception as exc:
        return failed(exchange, "response_filter", exc)
    finally:
        resp.writable = False
    return None


def fail_to_proxy(exchange: Exchange, failure: ProxyFailure) -> Response | None:
    """The operator's response for a failure, or None for the proxy's own error page."""
    try:
        response = exchange.phases.fail_to_proxy(request_view(exchange), failure, exchange.phase_ctx)
        return response_or_none(response, "fail_to_proxy")
    except Exception as exc:
        failed(exchange, "fail_to_proxy", exc)
        return None


def logging_phase(exchange: Exchange) -> None:
    """Run the logging phase once the exchange is over; a failure is logged and counted, nothing more."""
    resp = exchange.resp
    if resp is None and exchange.response_started:
        resp = ResponseHead(exchange.status, [])  # a proxy error page: its status is what the client got
    try:
        exchange.phases.logging(request_view(exchange), resp, exchange.failure, exchange.phase_ctx)
    except Exception as exc:
        failed(exchange, "logging", exc)


def response_bytes(response: Response, keep_alive: bool, head_only: bool, version: str) -> bytes:
    """A phase's Response, framed for the client: status line, its headers, Content-Length, Connection."""
    status = response.status
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
    hdr.serialize_fields(lines, response.headers.raw)
    if status not in _NO_LENGTH:
        lines.append(b"Content-Length: %d\r\n" % len(response.body))
    if version == "1.0":
        lines.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    else:
        lines.append(b"\r\n" if keep_alive else b"Connection: close\r\n\r\n")
    if not head_only:
        lines.append(response.body)
    return b"".join(lines)


def reason(status: int) -> bytes:
    """The reason phrase of a status a phase chose."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"

