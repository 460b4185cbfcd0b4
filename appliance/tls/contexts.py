"""SSL contexts of one worker: a TLS listener, its vhosts chosen by SNI, and backends.

Each TLS listener has an initial context (its default certificate, protocol range,
ciphers, ALPN, the shared ticket-key callback). Every vhost that has a certificate of
its own or verifies client certificates gets a context of its own; the SNI callback
switches the connection to it. Protocol versions and ciphers are taken from the
initial context by OpenSSL, so they are listener settings.

Trap handled here: switching `SSLObject.context` in the SNI callback does not carry
the new context's verify mode, depth or CRL flag over to the connection, so the client
certificate would never be requested. They are set on the connection's SSL* directly.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509

from appliance.config.schema import BackendConfig, Config, ListenerTlsConfig, SslHeadersConfig, VhostConfig
from appliance.shm import SharedRegion
from appliance.tls import libssl
from appliance.tls.crl import load_crls
from appliance.tls.headers import SslHeaders
from appliance.tls.ring import TicketRing, private_region, random_key
from appliance.tls.tickets import TicketKeyCallback

log = logging.getLogger("rproxyd.tls")

_VERSIONS = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
             "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"off": libssl.SSL_VERIFY_NONE, "optional": libssl.SSL_VERIFY_PEER,
           "required": libssl.SSL_VERIFY_PEER | libssl.SSL_VERIFY_FAIL_IF_NO_PEER_CERT}
_VERIFY_MODE = {"off": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
CRL_CHECK_INTERVAL = 1.0  # seconds between stat() calls on a CRL file, from the handshake path


def _load_certificates(ctx: ssl.SSLContext, certs: list[str], keys: list[str]) -> None:
    # One chain per key type: OpenSSL serves the ECDSA or the RSA one as the client supports.
    for index, cert in enumerate(certs):
        ctx.load_cert_chain(cert, keys[index] if keys else None)


def _server_context(tls: ListenerTlsConfig, certs: list[str], keys: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.maximum_version = _VERSIONS[tls.max_version]
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if tls.ciphers:
        ctx.set_ciphers(tls.ciphers)
    if tls.ciphersuites:
        set_ciphersuites(ctx, tls.ciphersuites)
    if tls.alpn:
        ctx.set_alpn_protocols(tls.alpn)
    _load_certificates(ctx, certs, keys)
    # Send the chain as configured (checked by `rproxyd -t`) instead of OpenSSL building one
    # from the trust store on every handshake, as nginx does.
    libssl.SSL_CTX_ctrl(libssl.ctx_pointer(ctx), libssl.SSL_CTRL_MODE, libssl.SSL_MODE_NO_AUTO_CHAIN, None)
    return ctx


def set_ciphersuites(ctx: ssl.SSLContext, suites: str) -> None:
    """Set the TLS 1.3 cipher suites (the stdlib has no call for it); ValueError when OpenSSL takes none."""
    if libssl.SSL_CTX_set_ciphersuites(libssl.ctx_pointer(ctx), suites.encode()) != 1:
        raise ValueError(f"OpenSSL knows no TLS 1.3 cipher suite in {suites!r}")


def unknown_ciphersuites(suites: str) -> list[str]:
    """The names in a TLS 1.3 cipher-suite list OpenSSL does not know.

    OpenSSL skips unknown names as long as one is known, so a typo would silently drop a
    suite: `rproxyd -t` asks about each name on its own.
    """
    unknown = []
    for name in filter(None, suites.split(":")):
        try:
            set_ciphersuites(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), name)
        except ValueError:
            unknown.append(name)
    return unknown


@dataclass(slots=True, eq=False)
class TlsSite:
    """A vhost as a TLS listener serves it."""

    vhost: str
    context: ssl.SSLContext | None  # None: the listener's initial context serves it
    verify: int  # SSL_VERIFY_* set on each connection switched to this site
    depth: int
    requires_cert: bool
    headers: SslHeaders
    config: VhostConfig | None = None
    # Every site of the listener by vhost, to judge a Host that names another vhost.
    sites: dict[str, TlsSite] = field(default_factory=dict)
    # The listener's ticket callback: it tells which vhost a resumed session was issued for.
    tickets: TicketKeyCallback | None = None
    # The client CRL as last loaded into `context`, parsed again for resumed sessions (crl.py).
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    crl_mtime: float = 0.0
    crl_checked: float = 0.0


@dataclass(slots=True, eq=False)
class TlsListener:
    """One TLS listener's contexts inside one worker."""

    config: ListenerTlsConfig
    context: ssl.SSLContext
    sites: dict[str, TlsSite] = field(default_factory=dict)
    # Referenced here because OpenSSL holds only a C pointer to its ctypes thunk: once
    # collected, the next handshake would jump into freed memory.
    tickets: TicketKeyCallback | None = None
    # The site of connections whose handshake did not choose one (no SNI callback ran).
    fallback: TlsSite | None = None
    vhost_of: Callable[[bytes | None], str] = str  # SNI → vhost name (set by build_listener)


def _site(vhost: VhostConfig, tls: ListenerTlsConfig) -> TlsSite:
    own = bool(vhost.certificate) or vhost.client_verify != "off"
    site = TlsSite(vhost=vhost.name, context=None, verify=_VERIFY[vhost.client_verify],
                   depth=vhost.client_verify_depth, requires_cert=vhost.client_verify == "required",
                   headers=SslHeaders(vhost.ssl_headers), config=vhost)
    if own:
        site.crl_mtime = _mtime(vhost.client_crl)
        site.context = _site_context(vhost, tls)
        if vhost.client_crl and site.verify:
            site.crls = load_crls(vhost.client_crl)
    return site


def _site_context(vhost: VhostConfig, tls: ListenerTlsConfig) -> ssl.SSLContext:
    if vhost.certificate:
        ctx = _server_context(tls, vhost.certificate, vhost.certificate_key)
    else:
        ctx = _server_context(tls, tls.certificate, tls.certificate_key)
    if vhost.client_verify != "off":
        ctx.verify_mode = _VERIFY_MODE[vhost.client_verify]
        if os.path.isdir(vhost.client_ca):
            ctx.load_verify_locations(capath=vhost.client_ca)
        else:
            ctx.load_verify_locations(cafile=vhost.client_ca)
        if vhost.client_crl:
            ctx.load_verify_locations(cafile=vhost.client_crl)  # a PEM file of CRLs
    return ctx


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime if path else 0.0
    except OSError:
        return 0.0


def build_listener(tls: ListenerTlsConfig, config: Config, vhost_of: Callable[[bytes | None], str],
                   tickets: TicketKeyCallback | None) -> TlsListener:
    ctx = _server_context(tls, tls.certificate, tls.certificate_key)
    pointer = libssl.ctx_pointer(ctx)
    # No per-process session-ID cache: it would not resume across workers, and every
    # resumption going through the ticket callback is what lets session.py tell which
    # vhost a resumed session belongs to.
    libssl.SSL_CTX_ctrl(pointer, libssl.SSL_CTRL_SET_SESS_CACHE_MODE, libssl.SSL_SESS_CACHE_OFF, None)
    if tickets is not None:
        tickets.install(pointer)
        ctx.num_tickets = config.tls.ticket_count
        libssl.SSL_CTX_set_timeout(pointer, int(config.tls.ticket_lifetime))
    else:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    listener = TlsListener(tls, ctx, tickets=tickets, vhost_of=vhost_of)
    for vhost in config.vhost:
        listener.sites[vhost.name] = _site(vhost, tls)
    # Clients whose SNI (or Host) names no vhost.
    listener.sites.setdefault("", TlsSite("", None, libssl.SSL_VERIFY_NONE, 0, False,
                                          SslHeaders(SslHeadersConfig())))
    listener.fallback = listener.sites[""]
    for site in listener.sites.values():
        site.sites = listener.sites
        site.tickets = tickets
    if len(config.vhost) == 1 and not any(site.context for site in listener.sites.values()):
        # One vhost and nothing to switch: every name selects it.
        listener.fallback = listener.sites[config.vhost[0].name]
        if not listener.fallback.headers.sni:
            # The SNI callback (a Python call per handshake) has nothing to decide. X-SSL-SNI
            # needs it though: without a servername callback OpenSSL does not acknowledge the
            # name, and does not keep it in the session for a TLS 1.2 resumption to report.
            return listener
    ctx.sni_callback = lambda sslobj, name, _ctx: select_site(listener, sslobj, name)
    return listener


def select_site(listener: TlsListener, sslobj: ssl.SSLObject, server_name: str | None) -> None:
    """The SNI callback: pick the vhost's site, switch context, apply its verify settings.

    Called on every handshake, also without SNI (server_name None: the default vhost)
    and on TLS 1.2 resumptions (with the original session's name).
    """
    try:
        vhost = listener.vhost_of(server_name.encode() if server_name else None)
        # A name of no vhost: the listener's default certificate, or its only vhost.
        site = (listener.sites.get(vhost) if vhost else None) or listener.fallback
        sslobj.rproxy_site = site
        sslobj.rproxy_sni = server_name
        if listener.tickets is not None:
            listener.tickets.note_site(libssl.ssl_pointer(sslobj), vhost)
        if site.context is None:
            return None
        if site.config is not None and site.config.client_crl:
            _refresh_crl(listener, site)
        sslobj.context = site.context
        if site.verify:
            pointer = libssl.ssl_pointer(sslobj)
            libssl.SSL_set_verify(pointer, site.verify, None)
            libssl.SSL_set_verify_depth(pointer, site.depth)
            if site.config is not None and site.config.client_crl:
                libssl.X509_VERIFY_PARAM_set_flags(libssl.SSL_get0_param(pointer),
                                                   libssl.X509_V_FLAG_CRL_CHECK)
    except Exception:
        log.exception("SNI selection failed; refusing the handshake")
        return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
    return None


def _refresh_crl(listener: TlsListener, site: TlsSite) -> None:
    """Rebuild the site's context and CRLs when the CRL file changed (checked at most once a second).

    Both or neither: a new CRL that either OpenSSL or cryptography refuses leaves the
    previous one in force for full handshakes and resumptions alike.
    """
    now = time.monotonic()
    if now - site.crl_checked < CRL_CHECK_INTERVAL:
        return
    site.crl_checked = now
    mtime = _mtime(site.config.client_crl)
    if mtime == site.crl_mtime:
        return
    try:
        crls = load_crls(site.config.client_crl)
        context = _site_context(site.config, listener.config)
    except (ssl.SSLError, OSError, ValueError) as exc:
        log.error("vhost %s: cannot reload CRL %s, keeping the previous one: %s", site.vhost,
                  site.config.client_crl, exc)
    else:
        site.context, site.crls = context, crls
        log.info("vhost %s: CRL %s reloaded", site.vhost, site.config.client_crl)
    site.crl_mtime = mtime


_BACKEND_CONTEXTS: dict[tuple[bool, str, str, str], ssl.SSLContext] = {}


def backend_peer(config: BackendConfig, host: str) -> tuple[ssl.SSLContext | None, str | None]:
    """(client context, server name) for connections to one server of a backend; (None, None): plain.

    Contexts are shared by every server with the same verification and client-certificate
    settings, so the handful of distinct peer settings costs a handful of contexts.
    """
    if not config.tls:
        return None, None
    settings = (config.tls_verify, config.tls_ca, config.tls_certificate, config.tls_key, config.protocol)
    ctx = _BACKEND_CONTEXTS.get(settings)
    if ctx is None:
        ctx = _BACKEND_CONTEXTS[settings] = _client_context(config)
    return ctx, config.tls_sni or host


def _client_context(config: BackendConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.tls_verify:
        if not config.tls_ca:
            ctx.load_default_certs()
        elif os.path.isdir(config.tls_ca):
            ctx.load_verify_locations(capath=config.tls_ca)
        else:
            ctx.load_verify_locations(cafile=config.tls_ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if config.tls_certificate:
        ctx.load_cert_chain(config.tls_certificate, config.tls_key or None)
    # ALPN offers exactly the protocol configured: an h2 backend that answers anything else
    # fails the connection (appliance/upstream/h2_connection.py).
    ctx.set_alpn_protocols([config.protocol])
    return ctx


def build_worker_tls(config: Config, vhost_of: Callable[[bytes | None], str],
                     ring_region: SharedRegion | None) -> dict[str, TlsListener]:
    """Every TLS listener's contexts for one worker, by listener name, sharing one ticket callback.

    `ring_region` is the supervisor's ticket-key ring; without one (a worker run on its
    own) the worker gets a private ring with one random key.
    """
    enabled = [listener for listener in config.listener if listener.tls.enabled]
    if not enabled:
        return {}
    libssl.self_test()
    tickets = None
    if config.tls.session_tickets:
        if ring_region is None:
            ring_region = private_region()
            TicketRing(ring_region).write([random_key()], time.monotonic())
        # Without an SNI callback (one vhost) every ticket is that vhost's.
        only = config.vhost[0].name if len(config.vhost) == 1 else ""
        tickets = TicketKeyCallback(TicketRing(ring_region), (v.name for v in config.vhost), only)
        log.info("session-ticket callback: %s", tickets.implementation())
    return {listener.name: build_listener(listener.tls, config, vhost_of, tickets) for listener in enabled}
