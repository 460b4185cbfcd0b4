"""Client-certificate revocation lists as cryptography reads them, for what OpenSSL does not check.

OpenSSL checks a vhost's CRL during a full handshake (X509_V_FLAG_CRL_CHECK on the
connection). A resumed session skips verification and keeps the result of its first one,
so a certificate revoked since would stay verified for as long as its tickets resume:
appliance/tls/session.py asks `is_revoked` once per resumed connection instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509

# A CRL file may hold several CRLs (one per issuing CA), as OpenSSL's loader accepts.
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def load_crls(path: str) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file; ValueError naming the file when it is unreadable or holds none."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot load CRL {path}: {exc.strerror}") from None
    try:
        crls = [x509.load_pem_x509_crl(block) for block in _PEM_CRL.findall(data)]
    except ValueError as exc:
        raise ValueError(f"cannot load CRL {path}: {exc}") from None
    if not crls:
        raise ValueError(f"cannot load CRL {path}: no PEM CRL in it")
    return crls


def is_revoked(crls: list[x509.CertificateRevocationList], der: bytes) -> bool:
    """Whether a CRL of the certificate's issuer lists its serial number.

    Serial numbers are unique per issuer only, so another CA's CRL never revokes it.
    """
    cert = x509.load_der_x509_certificate(der)
    return any(crl.issuer == cert.issuer
               and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
               for crl in crls)
