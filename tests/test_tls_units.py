"""Units of the TLS package: ticket-key file formats, the shared ring (rotation, a torn write),
header safety and proxy-header spellings, cipher suites, CRLs, the ticket callback's per-connection note."""

from __future__ import annotations

import base64
import contextlib
import datetime
import logging
import os
import ssl
import struct
import time
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from appliance.config import load
from appliance.config.schema import TlsConfig
from appliance.http import headers as hdr
from appliance.shm import SharedRegion
from appliance.tls import libssl, ring
from appliance.tls.contexts import TlsListener, build_listener, unknown_ciphersuites
from appliance.tls.crl import is_revoked, load_crls
from appliance.tls.headers import header_safe
from appliance.tls.keyfiles import read_key_file
from appliance.tls.tickets import TicketKeyCallback, wire_name


def test_nginx_key_files(tmp_path: Path) -> None:
    raw = os.urandom(80)
    (tmp_path / "k80").write_bytes(raw)
    [key] = read_key_file(tmp_path / "k80")
    assert (key.name, key.hmac, key.aes) == (raw[:16], raw[16:48], raw[48:])
    raw = os.urandom(48)
    (tmp_path / "k48").write_bytes(raw)
    [key] = read_key_file(tmp_path / "k48")
    assert (key.name, key.aes, key.hmac) == (raw[:16], raw[16:32], raw[32:])
    assert raw.hex() not in repr(key)


def test_haproxy_key_file_encrypts_with_the_second_to_last_key(tmp_path: Path) -> None:
    keys = [os.urandom(80) for _ in range(3)]
    (tmp_path / "tls-ticket-keys").write_bytes(b"\n".join(base64.b64encode(k) for k in keys) + b"\n")
    loaded = read_key_file(tmp_path / "tls-ticket-keys")
    assert [k.name for k in loaded] == [keys[1][:16], keys[0][:16], keys[2][:16]]
    assert (loaded[0].aes, loaded[0].hmac) == (keys[1][16:48], keys[1][48:])


def test_bad_key_files_are_explained(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(os.urandom(32))
    with pytest.raises(ValueError, match="48 or 80"):
        read_key_file(tmp_path / "short")
    with pytest.raises(ValueError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def _region() -> SharedRegion:
    return ring.private_region()


def test_ring_rotation_keeps_lifetime_over_interval_plus_one_keys() -> None:
    config = TlsConfig(ticket_lifetime=10.0, ticket_rotation=4.0)
    assert ring.ring_depth(config) == 4
    rotation = ring.TicketRotation(_region())
    rotation.configure(config)
    seq, keys, start = rotation.ring.read()
    assert len(keys) == 1 and seq % 2 == 0
    first = keys[0]
    for step in range(1, 7):
        rotation.tick(start + step * 4.0)
    _, keys, _ = rotation.ring.read()
    assert len(keys) == 4 and first not in keys
    rotation.tick(start + 6 * 4.0 + 1.0)  # not due yet
    assert rotation.ring.read()[1] == keys


def test_ring_survives_a_reload_and_is_kept_on_adoption() -> None:
    region = _region()
    rotation = ring.TicketRotation(region)
    rotation.configure(TlsConfig())
    keys = rotation.ring.read()[1]
    rotation.configure(TlsConfig(ticket_rotation=60.0))  # a reload
    assert rotation.ring.read()[1] == keys
    adopted = ring.TicketRotation(region)  # the upgraded supervisor image
    adopted.configure(TlsConfig(), adopted=True)
    assert adopted.ring.read()[1] == keys


def test_wire_names_differ_per_vhost() -> None:
    name = os.urandom(16)
    assert wire_name(name, "a") != wire_name(name, "b") and len(wire_name(name, "a")) == 16


def test_header_values_cannot_break_the_head() -> None:
    assert header_safe(b"CN=x\r\nX-Evil: 1") == b"CN=x\\x0d\\x0aX-Evil: 1"


# ------------------------------------------------- proxy headers in every spelling
@pytest.mark.parametrize("name", [b"x_forwarded_for", b"x-forwarded_proto", b"x_forwarded-host",
                                  b"x_request_id"])
def test_underscore_spellings_of_proxy_headers_are_dropped(name: bytes) -> None:
    assert hdr.REQUEST_ACTIONS[name] == hdr.REQ_DROP
    assert name.replace(b"_", b"-") in hdr.REQUEST_ACTIONS  # the canonical one keeps its own action


def test_ssl_prefixes_cover_every_spelling() -> None:
    for name in (b"x-ssl-subject", b"x_ssl_subject", b"x-ssl_subject", b"x_ssl-subject"):
        assert name[:6] in hdr.SSL_PREFIXES
    assert b"x-sslx"[:6] not in hdr.SSL_PREFIXES and b"x-s"[:6] not in hdr.SSL_PREFIXES


@pytest.mark.parametrize("name", [b"X-SSL-Subject", b"X_SSL_Subject", b"x-ssl_client-verify",
                                  b"X-Forwarded-For", b"X_Forwarded_Proto", b"X-Forwarded-Host",
                                  b"X-Request-Id", b"x_request_id", b"Via", b"Content_Length", b"Host"])
def test_request_trailers_never_carry_proxy_headers(name: bytes) -> None:
    assert not hdr.allowed_request_trailer(name)


def test_ordinary_request_trailers_pass() -> None:
    assert hdr.allowed_request_trailer(b"X-Checksum") and hdr.allowed_request_trailer(b"Server-Timing")


# --------------------------------------------------------------- cipher suites
def test_unknown_tls13_cipher_suites_are_named() -> None:
    assert unknown_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256") == []
    assert unknown_ciphersuites("") == []
    assert unknown_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_BOGUS:ECDHE-RSA-AES128-GCM-SHA256") == [
        "TLS_BOGUS", "ECDHE-RSA-AES128-GCM-SHA256"]


# ------------------------------------------------------------------------ CRLs
def _crl(ca: trustme.CA, serials: list[int]) -> bytes:
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now)
               .next_update(now + datetime.timedelta(days=1)))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_crls_revoke_by_issuer_and_serial(tmp_path: Path) -> None:
    ca, other = trustme.CA(), trustme.CA()
    pem = ca.issue_cert("client@example.test").cert_chain_pems[0].bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    path = tmp_path / "crls.pem"
    # Another CA's CRL listing the same serial number does not revoke it...
    path.write_bytes(_crl(other, [cert.serial_number]) + _crl(ca, []))
    crls = load_crls(str(path))
    assert len(crls) == 2 and not is_revoked(crls, der)
    # ...its own CA's does, wherever it is in the file.
    path.write_bytes(_crl(other, []) + _crl(ca, [cert.serial_number]))
    assert is_revoked(load_crls(str(path)), der)
    path.write_text("no CRL here\n")
    with pytest.raises(ValueError, match="no PEM CRL"):
        load_crls(str(path))


# ----------------------------------------------------- the ring's seqlock, torn
def test_a_writer_that_died_mid_write_costs_tickets_not_a_hang(caplog: pytest.LogCaptureFixture) -> None:
    keys = [ring.random_key()]
    key_ring = ring.TicketRing(_region())
    key_ring.write(keys, 1.0)
    seq = key_ring.seq()
    struct.pack_into("=Q", key_ring.view, 0, seq + 1)  # what a writer killed mid-write leaves
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, "rproxyd.tls"):
        assert key_ring.read() == (seq + 1, [], 0.0)
        assert key_ring.read()[1] == []
    assert time.monotonic() - started < 10 * ring.READ_PATIENCE
    assert len([r for r in caplog.records if "mid-write" in r.getMessage()]) == 1  # logged once
    key_ring.write(keys, 2.0)  # the next write repairs it
    new_seq, read_keys, rotated_at = key_ring.read()
    assert new_seq % 2 == 0 and new_seq > seq + 1 and read_keys == keys and rotated_at == 2.0


# ------------------------------------ the ticket callback on in-process handshakes
def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
               session: ssl.SSLSession | None = None) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A full TLS handshake over memory BIOs; the client also reads the TLS 1.3 tickets."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="a.test", session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            break
    with contextlib.suppress(ssl.SSLWantReadError):
        client.read(1)  # processes the NewSessionTicket messages
    return server, client


@pytest.fixture(params=[True, False], ids=["C", "ctypes"])
def one_vhost(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[TlsListener, TicketKeyCallback,
                                                                     ssl.SSLContext]:
    """A listener of one vhost with nothing to switch (no SNI callback), its tickets, a client;
    once with each ticket callback (the C one must be built: `make`)."""
    ca = trustme.CA()
    ca.issue_cert("a.test").private_key_and_cert_chain_pem.write_to_path(tmp_path / "a.pem")
    (tmp_path / "rproxy.toml").write_text(f"""
[[listener]]
name = "l0"
bind = "127.0.0.1:0"
[listener.tls]
enabled = true
certificate = "{tmp_path}/a.pem"

[backend.demo]
servers = ["127.0.0.1:1"]

[[vhost]]
name = "only"
[[vhost.route]]
backend = "demo"
""")
    config = load(tmp_path / "rproxy.toml")
    region = ring.private_region()
    ring.TicketRing(region).write([ring.random_key()], time.monotonic())
    tickets = TicketKeyCallback(ring.TicketRing(region), ["only"], "only", native=request.param)
    listener = build_listener(config.listener[0].tls, config, lambda name: "only", tickets)
    assert listener.context.sni_callback is None
    client = ssl.create_default_context(cafile=None, cadata=ca.cert_pem.bytes().decode())
    return listener, tickets, client


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_ticket_vhost_lives_on_the_connection(
        one_vhost: tuple[TlsListener, TicketKeyCallback, ssl.SSLContext], version: ssl.TLSVersion) -> None:
    listener, tickets, client_ctx = one_vhost
    client_ctx.minimum_version = client_ctx.maximum_version = version
    server, client = _handshake(listener.context, client_ctx)
    assert not server.session_reused and tickets.issued_for(libssl.ssl_pointer(server)) is None
    state = {name: len(value) for name, value in vars(tickets).items() if isinstance(value, dict)}
    for _ in range(20):  # resumptions, with no SNI callback to consume anything
        server, client = _handshake(listener.context, client_ctx, client.session)
        assert server.session_reused and tickets.issued_for(libssl.ssl_pointer(server)) == "only"
    # Nothing per connection stays behind in the worker.
    assert {name: len(value) for name, value in vars(tickets).items() if isinstance(value, dict)} == state


def test_a_torn_ring_means_full_handshakes(
        one_vhost: tuple[TlsListener, TicketKeyCallback, ssl.SSLContext]) -> None:
    listener, tickets, client_ctx = one_vhost
    _, client = _handshake(listener.context, client_ctx)
    session = client.session
    seq, keys, rotated_at = tickets.ring.read()
    struct.pack_into("=Q", tickets.ring.view, 0, seq + 1)  # the writer died mid-write
    server, _ = _handshake(listener.context, client_ctx, session)
    assert not server.session_reused
    tickets.ring.write(keys, rotated_at)  # the supervisor writes again: the same keys resume
    server, _ = _handshake(listener.context, client_ctx, session)
    assert server.session_reused
