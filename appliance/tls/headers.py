"""X-SSL-* request headers for the backend, built once per TLS connection.

Values come from the client certificate (parsed with cryptography, cached by its DER so a
client that reconnects costs a dict lookup) and from the session (cipher, protocol, SNI).
Every value is made header-safe: a certificate subject may hold any byte, and a CR or LF
would let a client inject headers of its own.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config.schema import SslHeadersConfig

_UNSAFE = re.compile(rb"[\x00-\x1f\x7f]")
_CACHE_LIMIT = 1024
# (config key, header name) for the certificate fields, in the order they are sent.
_CERT_FIELDS = (
    ("subject", b"X-SSL-Subject"),
    ("issuer", b"X-SSL-Issuer"),
    ("not_before", b"X-SSL-NotBefore"),
    ("not_after", b"X-SSL-NotAfter"),
    ("serial", b"X-SSL-Serial"),
    ("sha1", b"X-SSL-Sha1"),
    ("sha256", b"X-SSL-Sha256"),
    ("certificate", b"X-SSL-Certificate"),
)
_STRING_TAGS = {0x0C, 0x13, 0x16, 0x1A, 0x1E}  # UTF8, Printable, IA5, Visible, BMP strings


def header_safe(value: bytes) -> bytes:
    """Escape control characters as \\xNN so a value can never end the header line."""
    return _UNSAFE.sub(lambda m: b"\\x%02x" % m.group()[0], value)


def _line(name: bytes, value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "replace") if isinstance(value, str) else value
    return name + b": " + header_safe(raw) + b"\r\n"


def _extension_text(ext: x509.Extension) -> bytes:
    value = ext.value
    der = value.value if isinstance(value, x509.UnrecognizedExtension) else value.public_bytes()
    if len(der) >= 2 and der[0] in _STRING_TAGS and der[1] < 0x80 and len(der) == der[1] + 2:
        return der[2:]  # a short ASN.1 string: send its text
    return der.hex().encode()


class SslHeaders:
    """Which X-SSL-* headers one vhost sends, and the builder of their lines."""

    __slots__ = ("_cache", "cert_fields", "cipher", "enabled", "extensions", "protocol", "sni")

    def __init__(self, config: SslHeadersConfig) -> None:
        self.cert_fields = tuple((field, name) for field, name in _CERT_FIELDS if getattr(config, field))
        self.extensions = tuple((name.encode(), x509.ObjectIdentifier(oid))
                                for name, oid in config.extensions.items())
        self.cipher, self.protocol, self.sni = config.cipher, config.protocol, config.sni
        self.enabled = bool(self.cert_fields or self.extensions or self.cipher or self.protocol or self.sni)
        self._cache: dict[bytes, bytes] = {}

    def lines(self, cipher: str | None, protocol: str | None, sni: str | None, der: bytes | None) -> bytes:
        """The header lines for one connection (b"" when nothing is configured)."""
        if not self.enabled:
            return b""
        out = []
        if self.cipher and cipher:
            out.append(_line(b"X-SSL-Cipher", cipher))
        if self.protocol and protocol:
            out.append(_line(b"X-SSL-Protocol", protocol))
        if self.sni and sni:
            out.append(_line(b"X-SSL-SNI", sni))
        if der is not None and (self.cert_fields or self.extensions):
            cert_lines = self._cache.get(der)
            if cert_lines is None:
                cert_lines = self._cert_lines(der)
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[der] = cert_lines
            out.append(cert_lines)
        return b"".join(out)

    def _cert_lines(self, der: bytes) -> bytes:
        cert = x509.load_der_x509_certificate(der)
        values = {
            "subject": lambda: cert.subject.rfc4514_string(),
            "issuer": lambda: cert.issuer.rfc4514_string(),
            "not_before": lambda: f"{cert.not_valid_before_utc:%b %d %H:%M:%S %Y} GMT",
            "not_after": lambda: f"{cert.not_valid_after_utc:%b %d %H:%M:%S %Y} GMT",
            "serial": lambda: f"{cert.serial_number:X}",
            "sha1": lambda: hashlib.sha1(der).hexdigest(),  # a fingerprint, as RProxy sends
            "sha256": lambda: hashlib.sha256(der).hexdigest(),
            "certificate": lambda: urllib.parse.quote(
                cert.public_bytes(serialization.Encoding.PEM).decode(), safe=""),
        }
        out = [_line(name, values[field]()) for field, name in self.cert_fields]
        for name, oid in self.extensions:
            try:
                out.append(_line(name, _extension_text(cert.extensions.get_extension_for_oid(oid))))
            except x509.ExtensionNotFound:
                continue
        return b"".join(out)
