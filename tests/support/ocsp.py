"""A test CA with OCSP: certificates carrying an OCSP URL, `openssl ocsp` as the responder,
and response files built with cryptography. Everything is made at test time."""

from __future__ import annotations

import contextlib
import datetime
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from tests.support import wait_for


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class OcspCa:
    """A root CA in `directory` (ca.pem, ca.key) that issues leaves with or without an OCSP URL."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder().subject_name(_name("OCSP test CA")).issuer_name(_name("OCSP test CA"))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        (directory / "ca.key").write_bytes(_pem_key(self.key))
        self.index: list[str] = []  # openssl ca's index.txt lines

    def issue(self, name: str, url: str | None, revoked: bool = False) -> Path:
        """NAME.pem: key, leaf and the CA (the issuer stapling needs); listed in the responder's index."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=10))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False))
        if url is not None:
            builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]), critical=False)
        leaf = builder.sign(self.key, hashes.SHA256())
        path = self.dir / f"{name}.pem"
        path.write_bytes(_pem_key(key) + leaf.public_bytes(serialization.Encoding.PEM)
                         + self.cert.public_bytes(serialization.Encoding.PEM))
        expiry = leaf.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        status, when = ("R", _now().strftime("%y%m%d%H%M%SZ")) if revoked else ("V", "")
        self.index.append(f"{status}\t{expiry}\t{when}\t{leaf.serial_number:X}\tunknown\t/CN={name}\n")
        (self.dir / "index.txt").write_text("".join(self.index))
        return path

    def response_file(self, chain: Path, out: Path, good: bool = True, age: int = 60) -> Path:
        """A DER response for the chain's leaf, signed by the CA, `age` seconds old, valid for a day."""
        leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
        status = ocsp.OCSPCertStatus.GOOD if good else ocsp.OCSPCertStatus.REVOKED
        response = ocsp.OCSPResponseBuilder().add_response(
            cert=leaf, issuer=self.cert, algorithm=hashes.SHA1(), cert_status=status,
            this_update=_now() - datetime.timedelta(seconds=age),
            next_update=_now() + datetime.timedelta(days=1),
            revocation_time=None if good else _now(), revocation_reason=None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, self.cert).sign(self.key, hashes.SHA256())
        out.write_bytes(response.public_bytes(serialization.Encoding.DER))
        return out


@contextlib.contextmanager
def ocsp_responder(ca: OcspCa, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`openssl ocsp` answering for the certificates the CA issued so far, on 127.0.0.1:port.

    The port is picked (free_port) before the certificates are issued, as their OCSP URL
    names it; the index must be complete before the responder starts.
    """
    (ca.dir / "index.txt").write_text("".join(ca.index))
    proc = subprocess.Popen(
        ["openssl", "ocsp", "-index", str(ca.dir / "index.txt"), "-port", str(port),
         "-rsigner", str(ca.ca_path), "-rkey", str(ca.dir / "ca.key"), "-CA", str(ca.ca_path),
         "-ndays", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Not wait_port: `openssl ocsp` serves one connection at a time and hangs on a probe
        # that connects and sends nothing. Listening shows as the port being taken.
        wait_for(lambda: _taken(port, proc), 10, f"openssl ocsp listening on {port}")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _taken(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"openssl ocsp exited with {proc.returncode}")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
