"""The one hook the data path calls when an exchange ends.

ClientConnection calls `exchange_done` exactly once per exchange that got as far as
a request line: answered, failed with a proxy error, cut mid-response, or abandoned
by the client (status 499, as nginx logs it). Everything an access log or a metric
needs is on the Exchange by then (see the timing fields in appliance/http/exchange.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange

# Status recorded for an exchange whose client went away before it was answered.
CLIENT_CLOSED = 499


class Observer:
    """Base observer: records nothing. Subclasses log and count."""

    def exchange_done(self, exchange: Exchange) -> None:
        """Called once per exchange, after its last byte was written (or it was given up)."""

    def client_timeout(self, phase: int) -> None:
        """Called once per client connection a timeout ended; `phase`: metrics.T_HEADER, T_BODY or T_SEND."""

    def phase_error(self, phase: int) -> None:
        """Called once per operator phase that failed; `phase`: its index in appliance.phases.PHASES."""

    def proxy_header_refused(self, reason: int) -> None:
        """Called once per connection a proxy_protocol listener closed; `reason`: metrics.PP_*."""

    def tunnel_closed(self, reason: int, up: int, down: int) -> None:
        """Called once per upgrade tunnel that closed (before its exchange_done): why (an index
        in appliance.http.tunnel.CLOSE_REASONS), and the bytes client to backend and back."""

    def tls_handshake(self, resumed: bool) -> None:
        """Called once per completed client TLS handshake; `resumed` from ssl_object.session_reused."""

    def h2_connection(self, opened: bool) -> None:
        """Called when an HTTP/2 client connection opens (True) and once when it closes (False)."""

    def h2_stream(self, opened: bool) -> None:
        """Called when an HTTP/2 request stream opens (True) and once when it closes (False)."""

    def h2_goaway(self, error_code: int) -> None:
        """Called once per GOAWAY sent to an HTTP/2 client: 0 a graceful one (drain), else the
        error code the session closed with (a flood, a protocol error, too many glitches)."""
