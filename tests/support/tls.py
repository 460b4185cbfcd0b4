"""Certificates made at test time, and TLS clients: Python's ssl module and openssl s_client."""

from __future__ import annotations

import datetime
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# A private-enterprise OID for a string extension the X-SSL header tests look for.
TEAM_OID = "1.3.6.1.4.1.55555.1.1"


@dataclass
class Certs:
    """Every file the TLS tests use, in one directory."""

    dir: Path
    ca: trustme.CA

    def path(self, name: str) -> str:
        return str(self.dir / name)


def _write(certs: Certs, name: str, cert: trustme.LeafCert) -> None:
    cert.private_key_and_cert_chain_pem.write_to_path(certs.path(name))


def client_cert_with_extension(ca: trustme.CA, path: Path, common_name: str, team: str) -> None:
    """A client certificate carrying a UTF8String in a private extension (OID TEAM_OID)."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    value = team.encode()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(TEAM_OID),
                                                  bytes([0x0C, len(value)]) + value), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM))


def make_certs(directory: Path) -> Certs:
    """A CA (ECDSA) and an RSA CA; server certificates for a.test, b.test, default.test (ECDSA)
    and a.test (RSA); client certificates: trusted, with extension, and from an untrusted CA."""
    certs = Certs(directory, trustme.CA())
    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    other_ca = trustme.CA()
    for name in ("a.test", "b.test", "opt.test", "default.test"):
        _write(certs, f"{name}.pem", certs.ca.issue_cert(name))
    _write(certs, "a.test-rsa.pem", rsa_ca.issue_cert("a.test", key_type=trustme.KeyType.RSA))
    _write(certs, "client.pem", certs.ca.issue_cert("client@example.test", common_name="client1"))
    _write(certs, "stranger.pem", other_ca.issue_cert("stranger@example.test", common_name="stranger"))
    client_cert_with_extension(certs.ca, directory / "client-team.pem", "client2", "team-blue")
    now = datetime.datetime.now(datetime.UTC)
    _write(certs, "expired.pem", certs.ca.issue_cert("a.test", not_before=now - datetime.timedelta(days=30),
                                                     not_after=now - datetime.timedelta(days=1)))
    _write(certs, "expiring.pem", certs.ca.issue_cert("a.test", not_after=now + datetime.timedelta(days=5)))
    certs.ca.cert_pem.write_to_path(certs.path("ca.pem"))
    other_ca.cert_pem.write_to_path(certs.path("other-ca.pem"))
    write_crl(certs, [])
    (directory / "trust.pem").write_bytes(certs.ca.cert_pem.bytes() + rsa_ca.cert_pem.bytes())
    return certs


def write_crl(certs: Certs, revoked_pem_files: list[str]) -> None:
    """crl.pem: the CA's CRL revoking the leaf certificates of the given files."""
    ca_key = serialization.load_pem_private_key(certs.ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(certs.ca.cert_pem.bytes())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - datetime.timedelta(minutes=1))
               .next_update(now + datetime.timedelta(days=1)))
    for name in revoked_pem_files:
        leaf = x509.load_pem_x509_certificates(Path(certs.path(name)).read_bytes())[0]
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(leaf.serial_number).revocation_date(now).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    Path(certs.path("crl.pem")).write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def client_context(certs: Certs, cert: str | None = None, version: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.path("trust.pem"))
    ctx.set_alpn_protocols(["http/1.1"])  # https_get speaks HTTP/1.1 (HTTP/2: tests/support/h2.py)
    if cert:
        ctx.load_cert_chain(certs.path(cert))
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif version == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    peer_cert: dict
    version: str | None
    reused: bool
    session: ssl.SSLSession | None
    alpn: str | None


def https_get(port: int, sni: str | None, ctx: ssl.SSLContext, host: str | None = None, path: str = "/",
              session: ssl.SSLSession | None = None, extra: str = "") -> Reply:
    """One request on a fresh TLS connection; the reply, and the session for resumption."""
    if sni is None:
        ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni, session=session) as sock:
        info = (sock.getpeercert(), sock.version(), sock.session_reused, sock.selected_alpn_protocol())
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or sni or 'x'}\r\n{extra}"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        # A TLS 1.3 ticket arrives after the handshake; by now it has been read.
        reply_session = sock.session
    if not data:
        # TLS 1.3: a refused client certificate shows after the client's handshake is done.
        raise ConnectionResetError("closed without a response")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(lines[0].split()[1]), headers, body, info[0], info[1], info[2], reply_session, info[3])


def s_client(port: int, version: str, sni: str, sess_in: Path | None = None, sess_out: Path | None = None,
             cert: str | None = None, host: str | None = None) -> tuple[bool, str]:
    """openssl s_client with -sess_in/-sess_out (not -reconnect, which never resumes TLS 1.3).

    Returns (resumed, output). The request makes the server send its TLS 1.3 ticket
    before s_client exits, so -sess_out holds a resumable session.
    """
    argv = ["openssl", "s_client", f"-tls{version.replace('.', '_')}", "-connect", f"127.0.0.1:{port}",
            "-servername", sni, "-ign_eof"]
    if sess_in is not None:
        argv += ["-sess_in", str(sess_in)]
    if sess_out is not None:
        argv += ["-sess_out", str(sess_out)]
    if cert:
        argv += ["-cert", cert]
    request = f"GET / HTTP/1.1\r\nHost: {host or sni}\r\nConnection: close\r\n\r\n"
    out = subprocess.run(argv, input=request, capture_output=True, text=True, timeout=20).stdout
    return "\nReused, " in out, out


def s_client_handshake(port: int, *options: str, sni: str = "a.test") -> str:
    """openssl s_client's output (stdout and stderr) for one handshake with the given options."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni, *options]
    result = subprocess.run(argv, input="", capture_output=True, text=True, timeout=20)
    return result.stdout + result.stderr
