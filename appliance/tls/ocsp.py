"""OCSP responses for stapling: which certificates, the request, the fetch, the verification.

Used by `rproxyd -t` (check.py: every stapled certificate needs an OCSP URL or a response
file, and a file must verify) and by the supervisor's stapler (stapler.py), never by a
worker. cryptography builds and parses the messages; the fetch is a plain HTTP POST
(RFC 6960 appendix A) with urllib, as OCSP responders speak HTTP, not HTTPS.
"""

from __future__ import annotations

import datetime
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from appliance.config.schema import Config, entries

FETCH_TIMEOUT = 10.0  # seconds for one responder request
CLOCK_SKEW = datetime.timedelta(minutes=5)  # a thisUpdate this far ahead of our clock still counts
MAX_RESPONSE = 64 * 1024  # bytes read from a responder


class OcspError(ValueError):
    """A response that cannot be stapled, or a certificate that cannot get one; the message says why."""


class BadStatus(OcspError):
    """A valid response saying the certificate is revoked, or unknown to the responder."""


@dataclass(frozen=True, slots=True)
class StapledCertificate:
    """One certificate chain a stapling listener serves, and where its response comes from."""

    chain: str  # the PEM chain file, leaf first
    file: str  # DER response file; "": fetched from `url`
    where: tuple[str | int, ...]  # the config key of the chain, for messages
    file_where: tuple[str | int, ...]  # the config key of the response file

    def load(self) -> tuple[x509.Certificate, x509.Certificate, str]:
        """(leaf, issuer, OCSP URL ("" when none)); OcspError when the chain has no issuer."""
        try:
            chain = x509.load_pem_x509_certificates(Path(self.chain).read_bytes())
        except (OSError, ValueError) as exc:
            raise OcspError(f"cannot read certificate {self.chain}: {exc}") from None
        if len(chain) < 2:
            raise OcspError(f"{self.chain}: OCSP stapling needs the issuer's certificate after the leaf")
        return chain[0], chain[1], ocsp_url(chain[0])


def stapled_certificates(config: Config) -> list[StapledCertificate]:
    """Every certificate served by a listener with ocsp_stapling, each once (listener's, then vhosts')."""
    found: dict[str, StapledCertificate] = {}
    # entries(): under `rproxyd -t` an entry too broken to build is None.
    stapling = [(i, listener) for i, listener in entries(config.listener)
                if listener.tls.enabled and listener.tls.ocsp_stapling]
    for i, listener in stapling:
        for n, chain in enumerate(listener.tls.certificate):
            files = listener.tls.ocsp_stapling_file
            found.setdefault(chain, StapledCertificate(chain, files[n] if n < len(files) else "",
                                                       ("listener", i, "tls", "certificate", n),
                                                       ("listener", i, "tls", "ocsp_stapling_file", n)))
    if stapling:
        for i, vhost in entries(config.vhost):
            for n, chain in enumerate(vhost.certificate):
                files = vhost.ocsp_stapling_file
                found.setdefault(chain, StapledCertificate(chain, files[n] if n < len(files) else "",
                                                           ("vhost", i, "certificate", n),
                                                           ("vhost", i, "ocsp_stapling_file", n)))
    return list(found.values())


def ocsp_url(cert: x509.Certificate) -> str:
    """The first http:// OCSP URL in the certificate's Authority Information Access, or ""."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return ""
    for description in aia:
        if (description.access_method == AuthorityInformationAccessOID.OCSP
                and isinstance(description.access_location, x509.UniformResourceIdentifier)
                and description.access_location.value.startswith("http://")):
            return description.access_location.value
    return ""


def request_for(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A DER OCSP request for the leaf (SHA-1 CertID, as every responder understands it)."""
    return ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build().public_bytes(
        Encoding.DER)


def fetch(url: str, request: bytes, timeout: float = FETCH_TIMEOUT) -> bytes:
    """POST the request to the responder; the DER response, or OSError/OcspError."""
    post = urllib.request.Request(url, data=request, method="POST",
                                  headers={"Content-Type": "application/ocsp-request",
                                           "Accept": "application/ocsp-response"})
    with urllib.request.urlopen(post, timeout=timeout) as reply:
        if reply.status != 200:
            raise OcspError(f"responder {url} answered HTTP {reply.status}")
        return reply.read(MAX_RESPONSE)


@dataclass(frozen=True, slots=True)
class Verified:
    """A response fit to staple, and its time window (aware datetimes; next_update may be None)."""

    der: bytes
    this_update: datetime.datetime
    next_update: datetime.datetime | None


def verify(der: bytes, leaf: x509.Certificate, issuer: x509.Certificate,
           now: datetime.datetime | None = None) -> Verified:
    """Check a response as a client would; OcspError naming what is wrong.

    Successful, about this leaf, signed by the issuer or by a responder certificate the
    issuer signed for OCSP signing, status good, and within thisUpdate..nextUpdate.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise OcspError(f"not a DER OCSP response ({exc})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"responder status {response.response_status.name.lower()}")
    if response.serial_number != leaf.serial_number:
        raise OcspError(f"the response is about serial {response.serial_number:x}, not the "
                        f"certificate's {leaf.serial_number:x}")
    expected = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, response.hash_algorithm).build()
    if (response.issuer_key_hash != expected.issuer_key_hash
            or response.issuer_name_hash != expected.issuer_name_hash):
        raise OcspError("the response is about a certificate of another issuer")
    _check_signature(response, issuer)
    if response.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        raise BadStatus(f"certificate revoked at {response.revocation_time_utc:%Y-%m-%d %H:%M:%S} UTC")
    if response.certificate_status != ocsp.OCSPCertStatus.GOOD:
        raise BadStatus("certificate status unknown to the responder")
    this_update, next_update = response.this_update_utc, response.next_update_utc
    if this_update > now + CLOCK_SKEW:
        raise OcspError(f"thisUpdate {this_update:%Y-%m-%d %H:%M:%S} UTC is in the future")
    if next_update is not None and next_update <= now:
        raise OcspError(f"expired: nextUpdate {next_update:%Y-%m-%d %H:%M:%S} UTC has passed")
    return Verified(der, this_update, next_update)


def _check_signature(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> None:
    """Signed by the issuer, or by a delegated responder the issuer certified for OCSP signing."""
    signer = issuer
    if not _names_signer(response, issuer):
        delegated = [cert for cert in response.certificates if _names_signer(response, cert)]
        if not delegated:
            raise OcspError("signed by neither the issuer nor a responder certificate it carries")
        signer = delegated[0]
        try:
            usage = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = []
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
            raise OcspError("the responder certificate is not for OCSP signing")
        if not _signed_by(signer.signature, signer.tbs_certificate_bytes,
                          signer.signature_hash_algorithm, issuer):
            raise OcspError("the responder certificate is not signed by the issuer")
    if not _signed_by(response.signature, response.tbs_response_bytes, response.signature_hash_algorithm,
                      signer):
        raise OcspError("bad signature")


def _names_signer(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    digest = hashes.Hash(hashes.SHA1())
    digest.update(_public_key_bits(cert))
    return response.responder_key_hash == digest.finalize()


def _public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents (what responder key hashes cover)."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key.public_bytes(Encoding.DER, PublicFormat.PKCS1)


def _signed_by(signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None,
               signer: x509.Certificate) -> bool:
    key = signer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True
