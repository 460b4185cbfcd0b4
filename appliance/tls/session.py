"""What the data path knows about one TLS client connection, read once after the handshake."""

from __future__ import annotations

import asyncio
import logging
import ssl

from appliance.http import errors
from appliance.tls import libssl
from appliance.tls.contexts import TlsSite
from appliance.tls.crl import is_revoked

log = logging.getLogger("rproxyd.tls")


class TlsConnection:
    """The vhost the handshake was for, whether the client certificate verified, X-SSL lines."""

    __slots__ = ("lines", "resumed", "sites", "sni", "verified", "vhost")

    def __init__(self, transport: asyncio.BaseTransport, fallback: TlsSite) -> None:
        sslobj = transport.get_extra_info("ssl_object")
        site: TlsSite = getattr(sslobj, "rproxy_site", None) or fallback
        self.sni: str | None = getattr(sslobj, "rproxy_sni", None)
        self.resumed: bool = sslobj.session_reused
        self.vhost = site.vhost
        self.sites = site.sites
        self.verified = False
        self.lines = b""
        if not site.verify and not site.headers.enabled:
            return  # nothing to read from the session: the common case costs nothing more
        der = sslobj.getpeercert(binary_form=True) if site.verify else None
        self.verified = der is not None and _certificate_verified(sslobj, site, der)
        if site.headers.enabled:
            cipher = sslobj.cipher()
            self.lines = site.headers.lines(cipher[0] if cipher else None, sslobj.version(), self.sni,
                                            der if self.verified else None)

    def refusal(self, vhost: str) -> errors.ProxyFailure | None:
        """Why a request for `vhost` (from its Host) must not be served on this connection."""
        if vhost == self.vhost:
            if self.sites[vhost].requires_cert and not self.verified:
                return errors.CertificateRequired("a verified client certificate is required")
            return None
        if not vhost:
            return None  # no vhost answers this Host: routing says 404
        if self.sni is not None or self.sites[vhost].verify:
            # The certificate, client verification and resumption were for another vhost.
            return errors.MisdirectedRequest(f"Host is for vhost {vhost}, TLS for {self.vhost or '-'}")
        return None


def _certificate_verified(sslobj: ssl.SSLObject, site: TlsSite, der: bytes) -> bool:
    """Whether the client certificate `der` counts as verified for `site` on this connection."""
    pointer = libssl.ssl_pointer(sslobj)
    if libssl.SSL_get_verify_result(pointer) != libssl.X509_V_OK:
        return False
    if not sslobj.session_reused:
        return True  # verified in this handshake, against this vhost's CA and current CRL
    # A resumed session keeps its certificate and the result of its verification, but that
    # verification was against the CA of the vhost that issued the ticket: a TLS 1.3 client
    # may resume it under another vhost's SNI (see appliance/tls/tickets.py).
    if site.tickets is None or site.tickets.issued_for(pointer) != site.vhost:
        return False
    # It is also as old as the session: a certificate revoked since then would stay verified
    # for as long as its tickets resume, so the vhost's current CRL is asked again.
    if site.crls and is_revoked(site.crls, der):
        log.info("vhost %s: refusing a resumed session's client certificate: the CRL now revokes it",
                 site.vhost)
        return False
    return True
