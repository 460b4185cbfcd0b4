"""Configuration-time checks of every TLS file and cipher setting, for `rproxyd -t`, reloads and upgrades.

Each certificate chain must parse, start with the leaf, be in issuing order (each
certificate signed by the next), be within its validity, and match its key; the stdlib
`ssl` module, which serves the traffic, must load it too. Expiry within
EXPIRY_WARNING_DAYS is a warning, not an error. cryptography does the parsing here.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config.schema import Config, ListenerTlsConfig, entries
from appliance.tls import ocsp
from appliance.tls.contexts import unknown_ciphersuites
from appliance.tls.crl import load_crls
from appliance.tls.keyfiles import read_key_files
from appliance.tls.ring import MAX_KEYS, ring_depth

log = logging.getLogger("rproxyd.tls")

EXPIRY_WARNING_DAYS = 30
_VERSIONS = {"TLSv1": 0, "TLSv1.1": 1, "TLSv1.2": 2, "TLSv1.3": 3}

Problem = tuple[tuple[str | int, ...], str]


def load_chain(cert_path: str) -> list[x509.Certificate]:
    try:
        data = Path(cert_path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read certificate {cert_path}: {exc.strerror}") from None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{cert_path} holds no PEM certificate") from None
    return chain


def check_pair(cert_path: str, key_path: str) -> None:
    """Raise ValueError with a sentence naming the file for any fault of one chain and key."""
    chain = load_chain(cert_path)
    key_file = key_path or cert_path
    try:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"cannot read key {key_file}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key_file}: not a usable unencrypted PEM private key ({exc})") from None
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise ValueError(f"key {key_file} does not match certificate {cert_path} ({_subject(leaf)})")
    for position, (cert, issuer) in enumerate(itertools.pairwise(chain)):
        try:
            cert.verify_directly_issued_by(issuer)
        except Exception as exc:  # InvalidSignature, or a key type mismatch
            raise ValueError(
                f"{cert_path}: chain out of order: certificate {position + 1} ({_subject(cert)}) is "
                f"not issued by certificate {position + 2} ({_subject(issuer)}); put the leaf first, "
                f"then each issuer ({exc.__class__.__name__})") from None
    now = datetime.datetime.now(datetime.UTC)
    for cert in chain:
        if cert.not_valid_after_utc < now:
            raise ValueError(f"{cert_path}: {_subject(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        if cert.not_valid_before_utc > now:
            raise ValueError(f"{cert_path}: {_subject(cert)} is not valid before "
                             f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}")
        days = (cert.not_valid_after_utc - now).days
        if days < EXPIRY_WARNING_DAYS:
            log.warning("warning: %s: %s expires in %d days (%s)", cert_path, _subject(cert), days,
                        f"{cert.not_valid_after_utc:%Y-%m-%d}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path or None)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{cert_path}: OpenSSL refuses it: {exc}") from None


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _pairs(certs: list[str], keys: list[str], where: tuple[str | int, ...]) -> Iterator[Problem]:
    if keys and len(keys) != len(certs):
        yield (*where, "certificate_key"), f"expected one key per certificate ({len(certs)}), got {len(keys)}"
        return
    for index, cert in enumerate(certs):
        try:
            check_pair(cert, keys[index] if keys else "")
        except ValueError as exc:
            yield (*where, "certificate"), str(exc)


def _check_ca(path: str, where: tuple[str | int, ...]) -> Iterator[Problem]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        if Path(path).is_dir():
            ctx.load_verify_locations(capath=path)
        else:
            ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        yield where, f"cannot load CA {path}: {getattr(exc, 'strerror', None) or exc}"


def _check_ciphers(tls: ListenerTlsConfig, where: tuple[str | int, ...]) -> Iterator[Problem]:
    """The listener's TLS 1.2 cipher list and TLS 1.3 cipher suites, as a worker will set them."""
    if tls.ciphers:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(tls.ciphers)
        except ssl.SSLError:
            hint = "; TLS 1.3 suites go in ciphersuites" if tls.ciphers.startswith("TLS_") else ""
            yield (*where, "ciphers"), f"OpenSSL knows no cipher in {tls.ciphers!r}{hint}"
    unknown = unknown_ciphersuites(tls.ciphersuites)
    if unknown:
        yield ((*where, "ciphersuites"),
               f"OpenSSL knows no TLS 1.3 cipher suite {', '.join(map(repr, unknown))} (names are like "
               f"TLS_AES_128_GCM_SHA256; TLS 1.2 ciphers go in ciphers)")


def _check_stapling(config: Config) -> Iterator[Problem]:
    """Each stapled certificate needs its issuer, and an OCSP URL or a response file that verifies."""
    for i, listener in entries(config.listener):
        if len(listener.tls.ocsp_stapling_file) > len(listener.tls.certificate):
            yield (("listener", i, "tls", "ocsp_stapling_file"), "more files than certificates")
    for i, vhost in entries(config.vhost):
        if len(vhost.ocsp_stapling_file) > len(vhost.certificate):
            yield (("vhost", i, "ocsp_stapling_file"), "more files than certificates")
    for cert in ocsp.stapled_certificates(config):
        try:
            leaf, issuer, url = cert.load()
        except ocsp.OcspError as exc:
            yield cert.where, str(exc)
            continue
        if cert.file:
            try:
                ocsp.verify(Path(cert.file).read_bytes(), leaf, issuer)
            except OSError as exc:
                yield cert.file_where, f"cannot read OCSP response {cert.file}: {exc.strerror}"
            except ocsp.OcspError as exc:
                yield cert.file_where, f"{cert.file}: not stapled: {exc}"
        elif not url:
            yield (cert.where, f"{cert.chain} has no http:// OCSP URL (Authority Information Access) "
                   "to fetch a response from: give an ocsp_stapling_file or turn ocsp_stapling off")


def check_tls(config: Config) -> list[Problem]:
    """Every TLS problem in the configuration, as (key path, message)."""
    problems: list[Problem] = []
    for i, listener in entries(config.listener):
        tls = listener.tls
        where: tuple[str | int, ...] = ("listener", i, "tls")
        if not tls.enabled:
            continue
        if not tls.certificate:
            problems.append(((*where, "certificate"), "a TLS listener needs a default certificate"))
        problems.extend(_pairs(tls.certificate, tls.certificate_key, where))
        if _VERSIONS[tls.min_version] > _VERSIONS[tls.max_version]:
            problems.append(((*where, "min_version"), "must not be newer than max_version"))
        problems.extend(_check_ciphers(tls, where))
    problems.extend(_check_stapling(config))
    for i, vhost in entries(config.vhost):
        where = ("vhost", i)
        problems.extend(_pairs(vhost.certificate, vhost.certificate_key, where))
        if vhost.client_verify != "off":
            if not vhost.client_ca:
                problems.append(((*where, "client_ca"), "client_verify needs a client_ca"))
            else:
                problems.extend(_check_ca(vhost.client_ca, (*where, "client_ca")))
        if vhost.client_crl:
            try:
                load_crls(vhost.client_crl)
            except ValueError as exc:
                problems.append(((*where, "client_crl"), str(exc)))
        for header, oid in vhost.ssl_headers.extensions.items():
            try:
                x509.ObjectIdentifier(oid)
            except ValueError:
                problems.append(((*where, "ssl_headers", "extensions", header), f"{oid!r} is not an OID"))
    for name, backend in entries(config.backend):
        where = ("backend", name)
        if backend.tls and backend.tls_ca:
            problems.extend(_check_ca(backend.tls_ca, (*where, "tls_ca")))
        if backend.tls and backend.tls_certificate:
            problems.extend(_pairs([backend.tls_certificate],
                                   [backend.tls_key] if backend.tls_key else [], where))
    if config.tls.ticket_key_files:
        try:
            read_key_files(config.tls.ticket_key_files)
        except ValueError as exc:
            problems.append((("tls", "ticket_key_files"), str(exc)))
    elif ring_depth(config.tls) > MAX_KEYS:
        problems.append((("tls", "ticket_rotation"),
                         f"keeps {ring_depth(config.tls)} keys (ticket_lifetime/ticket_rotation + 1); "
                         f"at most {MAX_KEYS}: rotate less often"))
    return problems
