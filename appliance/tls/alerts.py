"""A failed handshake sends its TLS alert before the connection closes.

OpenSSL writes the fatal alert (handshake_failure, protocol_version, ...) into the
connection's outgoing memory BIO and fails the handshake; uvloop's SSLProtocol then
force-closes the transport without flushing that BIO (CPython's asyncio did the same:
gh-98078), so the client saw an unexpected EOF instead of the reason, unlike with nginx.

uvloop's SSLProtocol is a compiled class whose failure path cannot be hooked, but it
creates the SSLObject through the context's `sslobject_class`, and on SSLWantReadError
it writes what the outgoing BIO holds and waits for the peer. So the first fatal error
of a handshake that left an alert behind is reported as "want read": uvloop sends the
alert, the client (which must close on a fatal alert) closes, and uvloop ends the
handshake on that EOF; any further bytes re-raise the real error. A client that ignores
the alert is closed by the handshake timeout, as any client stalling its handshake is.

Successful handshakes run the stdlib's code unchanged: the only addition is a try block.
"""

from __future__ import annotations

import ssl

from appliance.tls import libssl

# uvloop's "try again" errors: not failures, nothing to flush.
_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError)


class AlertingSSLObject(ssl.SSLObject):
    """The SSLObject of server connections: flushes a failed handshake's alert (see above)."""

    def do_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except _AGAIN:
            raise
        except ssl.SSLError as exc:
            failed = self.__dict__.get("rproxy_failed")
            if failed is not None:  # the alert went out on the first failure
                raise failed from None
            if not libssl.BIO_ctrl_pending(libssl.SSL_get_wbio(libssl.ssl_pointer(self))):
                raise
            self.rproxy_failed = exc
            raise ssl.SSLWantReadError("TLS alert pending after a failed handshake") from None
