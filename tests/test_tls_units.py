"""Units of the TLS package: ticket-key file formats, the shared ring, rotation, header safety."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from appliance.config.schema import TlsConfig
from appliance.shm import SharedRegion
from appliance.tls import ring
from appliance.tls.headers import header_safe
from appliance.tls.keyfiles import read_key_file
from appliance.tls.tickets import wire_name


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
