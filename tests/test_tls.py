"""TLS termination end to end: SNI, ECDSA/RSA, protocol range, client certificates, X-SSL
headers (and spoofed copies of them), Host/SNI agreement, CRL and certificate reloads,
revocation of resumed sessions, bad files and ciphers, TLS to backends.

Certificates are made at test time (trustme, cryptography); everything is on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from cryptography import x509

from appliance.tls.contexts import CRL_CHECK_INTERVAL
from tests.support import wait_for
from tests.support.tls import (
    TEAM_OID,
    Certs,
    client_context,
    https_get,
    s_client,
    s_client_handshake,
    write_crl,
)
from tests.support_proc import Rproxyd, accepted_when_draining, config_text, demo_origin

pytestmark = pytest.mark.timeout(120)


def tls_extra(d: Path, listener: str = "") -> str:
    """[listener.tls] for the l0 listener and vhosts a (ECDSA+RSA), b (mTLS required), opt."""
    return f"""
[listener.tls]
enabled = true
certificate = "{d}/default.test.pem"
{listener}

[[vhost]]
name = "a"
hosts = ["a.test"]
certificate = ["{d}/a.test.pem", "{d}/a.test-rsa.pem"]
[vhost.ssl_headers]
cipher = true
protocol = true
sni = true
[[vhost.route]]
backend = "demo"

[[vhost]]
name = "b"
hosts = ["b.test"]
certificate = "{d}/b.test.pem"
client_verify = "required"
client_ca = "{d}/ca.pem"
client_crl = "{d}/crl.pem"
[vhost.ssl_headers]
subject = true
issuer = true
not_before = true
not_after = true
serial = true
sha1 = true
sha256 = true
certificate = true
extensions = {{ X-SSL-Team = "{TEAM_OID}" }}
[[vhost.route]]
backend = "demo"

[[vhost]]
name = "opt"
hosts = ["opt.test"]
certificate = "{d}/opt.test.pem"
client_verify = "optional"
client_ca = "{d}/ca.pem"
[vhost.ssl_headers]
subject = true
[[vhost.route]]
backend = "demo"
"""


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    with demo_origin() as port:
        yield port


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, certs: Certs, origin: int) -> Iterator[Rproxyd]:
    directory = tmp_path_factory.mktemp("proxy")
    proc = Rproxyd(directory, config_text(origin, directory / "run", tls_extra(certs.dir)))
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()


def _port(proxy: Rproxyd) -> int:
    return proxy.address[1]


def _served_name(port: int, sni: str | None, certs: Certs, **ctx_options: str) -> str:
    ctx = client_context(certs, **ctx_options)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as sock:
        der = sock.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)[0] + f"/{cert.public_key().__class__.__name__}"


def test_sni_selects_the_vhost_certificate(proxy: Rproxyd, certs: Certs) -> None:
    port = _port(proxy)
    assert _served_name(port, "a.test", certs).startswith("a.test/")
    assert _served_name(port, "b.test", certs).startswith("b.test/")
    assert _served_name(port, None, certs).startswith("default.test/")
    assert _served_name(port, "unknown.test", certs).startswith("default.test/")
    reply = https_get(port, "a.test", client_context(certs), path="/")
    assert reply.status == 200 and reply.alpn == "http/1.1"


def test_ecdsa_and_rsa_certificates_of_one_vhost(proxy: Rproxyd, certs: Certs) -> None:
    port = _port(proxy)
    ctx = client_context(certs, version="1.2")
    ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    assert "RSA" in _served_name_ctx(port, "a.test", ctx)
    ctx = client_context(certs, version="1.2")
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert "EC" in _served_name_ctx(port, "a.test", ctx)


def _served_name_ctx(port: int, sni: str, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).public_key().__class__.__name__


def test_protocol_range_defaults_to_tls12_and_up(proxy: Rproxyd, certs: Certs) -> None:
    port = _port(proxy)
    assert https_get(port, "a.test", client_context(certs, version="1.2")).version == "TLSv1.2"
    assert https_get(port, "a.test", client_context(certs, version="1.3")).version == "TLSv1.3"
    old = subprocess.run(["openssl", "s_client", "-tls1_1", "-connect", f"127.0.0.1:{port}",
                          "-servername", "a.test"], input="", capture_output=True, text=True, timeout=10)
    assert "Cipher is (NONE)" in old.stdout or old.returncode != 0


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_client_certificate_required(proxy: Rproxyd, certs: Certs, version: str) -> None:
    port = _port(proxy)
    reply = https_get(port, "b.test", client_context(certs, "client.pem", version), path="/headers")
    assert reply.status == 200
    for cert in (None, "stranger.pem"):  # no certificate, or one from a CA b does not trust
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            https_get(port, "b.test", client_context(certs, cert, version))


def test_client_certificate_optional(proxy: Rproxyd, certs: Certs) -> None:
    port = _port(proxy)
    without = https_get(port, "opt.test", client_context(certs), path="/headers")
    assert without.status == 200
    assert not [h for h in json.loads(without.body)["headers"] if h[0].lower().startswith("x-ssl")]
    with_cert = https_get(port, "opt.test", client_context(certs, "client.pem"), path="/headers")
    sent = dict(json.loads(with_cert.body)["headers"])
    assert sent["X-SSL-Subject"].startswith("CN=client1")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        https_get(port, "opt.test", client_context(certs, "stranger.pem"))


def test_x_ssl_header_values(proxy: Rproxyd, certs: Certs) -> None:
    port = _port(proxy)
    spoof = "X-SSL-Subject: CN=admin\r\nX-SSL-Team: red\r\nx-ssl-client-verify: SUCCESS\r\n"
    reply = https_get(port, "b.test", client_context(certs, "client-team.pem"), path="/headers", extra=spoof)
    sent = json.loads(reply.body)["headers"]
    names = [name for name, _ in sent]
    assert names.count("X-SSL-Subject") == 1 and "x-ssl-client-verify" not in names
    values = dict(sent)
    pem = Path(certs.path("client-team.pem")).read_bytes()
    cert = x509.load_pem_x509_certificates(pem)[0]
    der = cert.public_bytes(__import__("cryptography").hazmat.primitives.serialization.Encoding.DER)
    assert values["X-SSL-Subject"] == "CN=client2"
    assert values["X-SSL-Issuer"] == cert.issuer.rfc4514_string()
    assert values["X-SSL-Serial"] == f"{cert.serial_number:X}"
    assert values["X-SSL-NotBefore"] == f"{cert.not_valid_before_utc:%b %d %H:%M:%S %Y} GMT"
    assert values["X-SSL-NotAfter"] == f"{cert.not_valid_after_utc:%b %d %H:%M:%S %Y} GMT"
    assert values["X-SSL-Sha1"] == hashlib.sha1(der).hexdigest()
    assert values["X-SSL-Sha256"] == hashlib.sha256(der).hexdigest()
    assert x509.load_pem_x509_certificate(urllib.parse.unquote(values["X-SSL-Certificate"]).encode()) == cert
    assert values["X-SSL-Team"] == "team-blue"
    # Session headers on a: cipher, protocol, SNI.
    values = dict(json.loads(https_get(port, "a.test", client_context(certs, version="1.2"),
                                       path="/headers").body)["headers"])
    assert values["X-SSL-Protocol"] == "TLSv1.2" and values["X-SSL-SNI"] == "a.test"
    assert values["X-SSL-Cipher"].startswith("ECDHE-")


def test_host_must_agree_with_sni(proxy: Rproxyd, certs: Certs) -> None:
    port = _port(proxy)
    # A client certificate verified for a must not open b (nor any other vhost).
    assert https_get(port, "a.test", client_context(certs), host="b.test").status == 421
    assert https_get(port, "b.test", client_context(certs, "client.pem"), host="a.test").status == 421
    assert https_get(port, "a.test", client_context(certs), host="a.test:443").status == 200
    # Other spellings of b, and b as an absolute-form target under Host a, are still b.
    for host in ("B.TEST", "b.test.", "b.test:443"):
        assert https_get(port, "a.test", client_context(certs), host=host).status == 421, host
    absolute = https_get(port, "a.test", client_context(certs), host="a.test", path="https://b.test/")
    assert absolute.status == 421
    # Without SNI, a vhost that verifies client certificates is never reached.
    assert https_get(port, None, client_context(certs), host="b.test").status == 421
    assert https_get(port, None, client_context(certs), host="a.test").status == 200


def test_crl_is_reloaded_when_it_changes(proxy: Rproxyd, certs: Certs) -> None:
    port = _port(proxy)
    ctx = client_context(certs, "client.pem")
    assert https_get(port, "b.test", ctx).status == 200
    write_crl(certs, ["client.pem"])
    try:
        def refused() -> bool:
            try:
                https_get(port, "b.test", client_context(certs, "client.pem"))
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                return True
            return False
        wait_for(refused, 10, "the revoked certificate refused", interval=0.3)
        assert https_get(port, "b.test", client_context(certs, "client-team.pem")).status == 200
    finally:
        write_crl(certs, [])
    wait_for(lambda: _status_or_none(port, certs) == 200, 10, "the certificate accepted again", interval=0.3)


def _status_or_none(port: int, certs: Certs) -> int | None:
    try:
        return https_get(port, "b.test", client_context(certs, "client.pem")).status
    except (ssl.SSLError, OSError):
        return None


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "-t", "-c", str(config)],
                          capture_output=True, text=True, timeout=30)


def test_bad_certificates_and_keys_rejected_at_check(tmp_path: Path, certs: Certs, origin: int) -> None:
    d = certs.dir
    leaf = Path(certs.path("a.test.pem")).read_bytes()
    (tmp_path / "out-of-order.pem").write_bytes(leaf + Path(certs.path("other-ca.pem")).read_bytes())
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    cases = {
        f'certificate = "{d}/a.test.pem"\ncertificate_key = "{d}/b.test.pem"': "does not match certificate",
        f'certificate = "{tmp_path}/out-of-order.pem"': "chain out of order",
        f'certificate = "{d}/expired.pem"': "expired on",
        f'certificate = "{tmp_path}/garbage.pem"': "holds no PEM certificate",
        f'certificate = "{tmp_path}/missing.pem"': "cannot read certificate",
    }
    config = tmp_path / "rproxy.toml"
    for tls, message in cases.items():
        config.write_text(config_text(origin, tmp_path, f"[listener.tls]\nenabled = true\n{tls}\n"))
        result = _check(config)
        assert result.returncode == 1 and message in result.stderr, (tls, result.stderr)
        assert "listener[0].tls.certificate" in result.stderr
    config.write_text(config_text(origin, tmp_path, f'[listener.tls]\nenabled = true\n'
                                  f'certificate = "{d}/expiring.pem"\n'))
    result = _check(config)
    assert result.returncode == 0 and "expires in" in result.stderr, result.stderr


def test_certificates_reload_on_hup_and_bad_ones_are_refused(
        tmp_path: Path, certs: Certs, origin: int) -> None:
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(certs.path("a.test.pem"), live / "site.pem")
    extra = f'[listener.tls]\nenabled = true\ncertificate = "{live}/site.pem"\n'
    proxy = Rproxyd(tmp_path, config_text(origin, tmp_path / "run", extra))
    try:
        port = _port(proxy)
        first = _served_serial(port, certs)
        # A new certificate for the same name (as a renewal would bring), then HUP.
        certs.ca.issue_cert("a.test").private_key_and_cert_chain_pem.write_to_path(str(live / "site.pem"))
        assert proxy.reload().returncode == 0
        second = _served_serial(port, certs)
        assert second != first
        # A broken file on reload: refused with the reason, the running generation keeps serving.
        (live / "site.pem").write_text("broken\n")
        result = proxy.reload()
        assert result.returncode == 1 and "holds no PEM certificate" in result.stderr, result.stderr
        assert _served_serial(port, certs) == second
    finally:
        proxy.stop()


def _served_serial(port: int, certs: Certs) -> int:
    ctx = client_context(certs)
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as sock:
        return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def _plain_get(address: tuple[str, int], host: str) -> bytes:
    with socket.create_connection(address, 5) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


class TlsOrigin:
    """A TLS backend that records the SNI and client certificate of each connection."""

    def __init__(self, certs: Certs) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certs.path("b.test.pem"))
        self.ctx.verify_mode = ssl.CERT_OPTIONAL
        self.ctx.load_verify_locations(certs.path("ca.pem"))
        self.seen: list[tuple[str | None, str | None]] = []
        self._sni: str | None = None
        self.ctx.sni_callback = lambda sock, name, ctx: setattr(self, "_sni", name)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            # A thread per connection: the proxy's pool opens idle connections ahead of need.
            threading.Thread(target=self._answer, args=(raw,), daemon=True).start()

    def _answer(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                peer = conn.getpeercert() or {}
                subject = dict(x[0] for x in peer.get("subject", ()))
                self.seen.append((self._sni, subject.get("commonName")))
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\ntls")
        except (OSError, ssl.SSLError):
            return

    def stop(self) -> None:
        self.sock.close()


def test_tls_to_backends(tmp_path: Path, certs: Certs) -> None:
    backend = TlsOrigin(certs)
    d = certs.dir
    text = config_text(1, tmp_path / "run").replace(
        'servers = ["127.0.0.1:1"]',
        f'servers = ["127.0.0.1:{backend.port}"]\ntls = true\ntls_ca = "{d}/ca.pem"\ntls_sni = "b.test"\n'
        f'tls_certificate = "{d}/client.pem"\nconnect_timeout = "2s"\n')
    text += f"""
[backend.wrongca]
servers = ["127.0.0.1:{backend.port}"]
tls = true
tls_ca = "{d}/other-ca.pem"
tls_sni = "b.test"
retries = 0

[[vhost]]
name = "bad"
hosts = ["bad.test"]
[[vhost.route]]
backend = "wrongca"
"""
    proxy = Rproxyd(tmp_path, text)
    try:
        address = proxy.address
        assert _plain_get(address, "x").endswith(b"\r\n\r\ntls")
        assert ("b.test", "client1") in backend.seen  # SNI and client certificate reached it
        # Verification against a CA that did not sign the backend's certificate fails: the
        # server counts as unreachable (503 once its connect failed, 502 on the failing try).
        assert _plain_get(address, "bad.test")[:12] in (b"HTTP/1.1 502", b"HTTP/1.1 503")
        assert "certificate verify failed" in proxy.log() or "SSLCertVerificationError" in proxy.log()
    finally:
        proxy.stop()
        backend.stop()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_ticket_never_opens_a_client_auth_vhost(
        proxy: Rproxyd, certs: Certs, version: str, tmp_path: Path) -> None:
    """A session resumed under another vhost's SNI carries no verified certificate there."""
    port = _port(proxy)
    # A session of a (no client certificate), and one of opt verified with a certificate b's
    # CA would accept too: neither may serve b.
    for sni, cert in (("a.test", None), ("opt.test", certs.path("client.pem"))):
        session = tmp_path / f"{sni}-{version}.pem"
        resumed, out = s_client(port, version, sni, sess_out=session, cert=cert)
        assert "HTTP/1.1 200" in out
        resumed, out = s_client(port, version, "b.test", sess_in=session)
        status = out.split("HTTP/1.1 ", 1)[1][:3] if "HTTP/1.1 " in out else "no response"
        # TLS 1.3 resumes under the new SNI: 403; TLS 1.2 keeps the session's SNI: 421.
        assert status in ("403", "421"), (sni, resumed, status)
        if version == "1.3":
            assert resumed and status == "403"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_resumed_session_of_a_revoked_certificate_is_refused(
        proxy: Rproxyd, certs: Certs, version: str, tmp_path: Path) -> None:
    """OpenSSL does not verify again on resumption: the vhost's current CRL is asked instead."""
    port = _port(proxy)
    revokee = f"revokee-{version}.pem"
    certs.ca.issue_cert("revokee@example.test", common_name="revokee").private_key_and_cert_chain_pem \
        .write_to_path(certs.path(revokee))
    first, second = tmp_path / "first.pem", tmp_path / "second.pem"
    resumed, out = s_client(port, version, "b.test", sess_out=first, cert=certs.path(revokee))
    assert not resumed and "HTTP/1.1 200" in out
    resumed, out = s_client(port, version, "b.test", sess_in=first, sess_out=second)
    assert resumed and "HTTP/1.1 200" in out, "a resumed session keeps its verified certificate"
    session = second if second.exists() else first  # a TLS 1.2 resumption brings no new ticket
    write_crl(certs, [revokee])
    try:
        wait_for(lambda: _refused(port, certs, revokee), 10, "a full handshake refused", interval=0.3)
        time.sleep(CRL_CHECK_INTERVAL + 0.2)  # every worker looks at the CRL file again
        resumed, out = s_client(port, version, "b.test", sess_in=session)
        assert resumed and "HTTP/1.1 403" in out, out
        assert "the CRL now revokes it" in proxy.log()
    finally:
        write_crl(certs, [])


def _refused(port: int, certs: Certs, cert: str) -> bool:
    try:
        https_get(port, "b.test", client_context(certs, cert))
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    return False


class RecordingOrigin:
    """A plain HTTP/1.1 origin that keeps the raw bytes of every request (head, body, trailers)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while (raw := _read_request(stream)) is not None:
                self.requests.append(raw)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def request(self, path: str) -> bytes:
        """The raw request whose request line names `path`."""
        line = f" {path} HTTP/1.1\r\n".encode()
        return wait_for(lambda: next((r for r in self.requests if line in r.split(b"\r\n", 1)[0] + b"\r\n"),
                                     None), 5, f"the request for {path}")

    def stop(self) -> None:
        self.sock.close()


def _read_request(stream: BinaryIO) -> bytes | None:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        if not line:
            return None
        head += line
    lowered = head.lower()
    if b"\r\ntransfer-encoding: chunked\r\n" in lowered:
        body = b""
        while size_line := stream.readline():
            body += size_line
            size = int(size_line.split(b";")[0], 16)
            if not size:
                break
            body += stream.read(size + 2)
        while (line := stream.readline()) not in (b"", b"\r\n"):
            body += line  # trailer fields
        return head + body + b"\r\n"
    length = re.search(rb"\r\ncontent-length: *(\d+)", lowered)
    return head + (stream.read(int(length.group(1))) if length else b"")


@pytest.fixture(scope="module")
def one_vhost(tmp_path_factory: pytest.TempPathFactory,
              certs: Certs) -> Iterator[tuple[Rproxyd, RecordingOrigin]]:
    """A TLS listener with one vhost and no context of its own (no SNI callback needed to
    pick a certificate) that sends X-SSL-SNI, in front of a recording origin."""
    directory = tmp_path_factory.mktemp("one-vhost")
    origin = RecordingOrigin()
    text = config_text(origin.port, directory / "run",
                       f'[listener.tls]\nenabled = true\ncertificate = "{certs.dir}/a.test.pem"\n\n'
                       "[vhost.ssl_headers]\nsni = true\nprotocol = true\n")
    proc = Rproxyd(directory, text)
    yield proc, origin
    proc.stop()
    origin.stop()
    assert "Traceback" not in proc.log(), proc.log()


def _sent_headers(raw: bytes) -> list[tuple[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return [(name.strip(), value.strip()) for name, _, value in (line.partition(":")
                                                                 for line in head.split("\r\n")[1:])]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_sni_header_with_one_vhost(one_vhost: tuple[Rproxyd, RecordingOrigin], certs: Certs,
                                   version: str) -> None:
    proxy, origin = one_vhost
    port = _port(proxy)
    ctx = client_context(certs, version=version)
    full = https_get(port, "a.test", ctx, path=f"/sni-full-{version}")
    resumed = https_get(port, "a.test", ctx, path=f"/sni-resumed-{version}", session=full.session)
    assert full.status == resumed.status == 200 and resumed.reused
    for path in (f"/sni-full-{version}", f"/sni-resumed-{version}"):
        sent = dict(_sent_headers(origin.request(path)))
        assert sent["X-SSL-SNI"] == "a.test" and sent["X-SSL-Protocol"] == f"TLSv{version}", (path, sent)
    # Without SNI there is no name to send; the vhost still answers.
    assert https_get(port, None, client_context(certs), host="a.test", path="/sni-none").status == 200
    assert "X-SSL-SNI" not in dict(_sent_headers(origin.request("/sni-none")))


def test_proxy_headers_cannot_be_spoofed_in_trailers_or_underscore_spellings(
        one_vhost: tuple[Rproxyd, RecordingOrigin], certs: Certs) -> None:
    proxy, origin = one_vhost
    head_spoofs = ("X_SSL_Subject: CN=admin\r\nX-SSL_Client-Verify: SUCCESS\r\nx_ssl-sni: admin.test\r\n"
                   "X_Forwarded_For: 6.6.6.6\r\nX-Forwarded_Proto: spoofed\r\nX_Forwarded-Host: spoofed\r\n"
                   "X_Request_Id: spoofed\r\n")
    trailer_spoofs = ("X-SSL-Subject: CN=admin\r\nX_SSL_Subject: CN=admin\r\nX-Forwarded-For: 6.6.6.6\r\n"
                      "X_Forwarded_Proto: spoofed\r\nX-Request-Id: spoofed\r\nX-Checksum: 5d41402a\r\n")
    request = ("POST /spoof HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n" + head_spoofs
               + "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n" + trailer_spoofs + "\r\n").encode()
    ctx = client_context(certs)
    with socket.create_connection(("127.0.0.1", _port(proxy)), 10) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    raw_request = origin.request("/spoof")
    for forged in (b"admin", b"6.6.6.6", b"spoofed", b"SUCCESS"):
        assert forged not in raw_request, raw_request
    body = raw_request.partition(b"\r\n\r\n")[2]
    assert body.endswith(b"0\r\nX-Checksum: 5d41402a\r\n\r\n"), body  # an ordinary trailer still passes
    sent = dict(_sent_headers(raw_request))
    assert sent["X-SSL-SNI"] == "a.test" and sent["X-Forwarded-Proto"] == "https"
    assert sent["X-Forwarded-For"] == "127.0.0.1"


def _tls_config(tmp_path: Path, certs: Certs, origin: int, tls: str) -> str:
    return config_text(origin, tmp_path / "run", f'[listener.tls]\nenabled = true\n'
                       f'certificate = "{certs.dir}/a.test.pem"\n{tls}\n')


def test_a_connection_in_its_handshake_when_its_worker_drains_is_served(
        tmp_path: Path, certs: Certs, origin: int) -> None:
    # uvloop makes a TLS connection's protocol only when the handshake completes, so a
    # draining worker saw no client in it and exited under the handshake (a reload dropped it).
    proxy = Rproxyd(tmp_path, _tls_config(tmp_path, certs, origin, ""))
    try:
        raw = accepted_when_draining(proxy, _port(proxy))
        with client_context(certs).wrap_socket(raw, server_hostname="a.test") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        assert b"connection: close" in data.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    finally:
        proxy.stop()


def test_bad_ciphers_and_cipher_suites_rejected_at_check_and_reload(
        tmp_path: Path, certs: Certs, origin: int) -> None:
    config = tmp_path / "rproxy.toml"
    cases = {
        'ciphersuites = "BOGUS"': ("listener[0].tls.ciphersuites", "'BOGUS'"),
        # OpenSSL itself would drop the unknown name silently and take the other one.
        'ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_AES_128_GCM_SHA257"':
            ("listener[0].tls.ciphersuites", "'TLS_AES_128_GCM_SHA257'"),
        'ciphersuites = "ECDHE-RSA-AES128-GCM-SHA256"':
            ("listener[0].tls.ciphersuites", "TLS 1.2 ciphers go in"),
        'ciphers = "NOPE"': ("listener[0].tls.ciphers", "OpenSSL knows no cipher in 'NOPE'"),
    }
    for tls, (key, message) in cases.items():
        config.write_text(_tls_config(tmp_path, certs, origin, tls))
        result = _check(config)
        assert result.returncode == 1, (tls, result.stderr)
        assert f"{config}: {key}: " in result.stderr and message in result.stderr, (tls, result.stderr)

    chacha = 'ciphersuites = "TLS_CHACHA20_POLY1305_SHA256"'
    proxy = Rproxyd(tmp_path, _tls_config(tmp_path, certs, origin, chacha))
    try:
        port = _port(proxy)
        assert _negotiated_cipher(port, certs) == "TLS_CHACHA20_POLY1305_SHA256"
        proxy.config_path.write_text(_tls_config(tmp_path, certs, origin, 'ciphersuites = "TLS_CHACHA20"'))
        result = proxy.reload()
        assert result.returncode == 1 and "listener[0].tls.ciphersuites" in result.stderr, result.stderr
        assert _negotiated_cipher(port, certs) == "TLS_CHACHA20_POLY1305_SHA256"  # still serving
    finally:
        proxy.stop()


def _negotiated_cipher(port: int, certs: Certs) -> str:
    ctx = client_context(certs, version="1.3")
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as sock:
        return sock.cipher()[0]


# A TLS 1.2 CBC suite (LUCKY13) that Python's default list offers and the listener's default does not.
_CBC = "ECDHE-ECDSA-AES128-SHA256"


def test_default_ciphers_are_ecdhe_aead_and_cbc_is_opt_in(proxy: Rproxyd, certs: Certs, tmp_path: Path,
                                                          origin: int) -> None:
    port = _port(proxy)
    assert "Cipher is ECDHE-ECDSA-AES128-GCM-SHA256" in s_client_handshake(
        port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert "Cipher is ECDHE-ECDSA-CHACHA20-POLY1305" in s_client_handshake(
        port, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert f"Cipher is {_CBC}" not in s_client_handshake(port, "-tls1_2", "-cipher", _CBC)
    opt_in = Rproxyd(tmp_path, _tls_config(tmp_path, certs, origin,
                                           'ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES"'))
    try:
        assert f"Cipher is {_CBC}" in s_client_handshake(_port(opt_in), "-tls1_2", "-cipher", _CBC)
    finally:
        opt_in.stop()


@pytest.mark.parametrize(("options", "alert"), [
    (("-tls1_2", "-cipher", _CBC), "alert handshake failure"),  # no common cipher
    (("-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"), "alert handshake failure"),  # no common suite
    (("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"), "alert protocol version"),  # below min_version
])
def test_a_failed_handshake_sends_its_alert(proxy: Rproxyd, options: tuple[str, ...], alert: str) -> None:
    """As nginx does, and not an unexpected EOF: uvloop closed without flushing the alert."""
    out = s_client_handshake(_port(proxy), *options)
    assert alert in out and "unexpected eof" not in out, out
    assert "Cipher is ECDHE" in s_client_handshake(_port(proxy), "-tls1_2")  # still serving
