"""Ticket keys from files, in the formats nginx and HAProxy read, so a fleet can share them.

- nginx (`ssl_session_ticket_key`): one key per file, 48 or 80 raw bytes.
  48 = name(16) | AES-128 key(16) | HMAC key(16); 80 = name(16) | HMAC key(32) | AES-256 key(32).
- HAProxy (`tls-ticket-keys`): one base64 key per line, 48 or 80 bytes decoded, laid out
  name | AES key | HMAC key; HAProxy encrypts with the second-to-last key of the file.

The keys of every file are returned newest (encrypting) first: the first file's key, or
for a HAProxy file its second-to-last line, then the others.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TicketKey:
    """One session-ticket key: its public name and its secret HMAC and AES keys."""

    name: bytes
    hmac: bytes
    aes: bytes

    def __repr__(self) -> str:  # never print secrets
        return f"TicketKey(name={self.name.hex()})"


def _nginx(raw: bytes) -> TicketKey:
    if len(raw) == 48:
        return TicketKey(raw[:16], hmac=raw[32:48], aes=raw[16:32])
    return TicketKey(raw[:16], hmac=raw[16:48], aes=raw[48:80])


def _haproxy(raw: bytes) -> TicketKey:
    half = (len(raw) - 16) // 2
    return TicketKey(raw[:16], aes=raw[16:16 + half], hmac=raw[16 + half:])


def read_key_file(path: Path) -> list[TicketKey]:
    """The keys of one file, encrypting key first; ValueError says what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ticket key file: {exc.strerror}") from None
    if len(raw) in (48, 80):
        return [_nginx(raw)]
    keys = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            decoded = base64.b64decode(line, validate=True)
        except binascii.Error:
            decoded = b""
        if len(decoded) not in (48, 80):
            raise ValueError(
                f"{path}: line {number}: expected a base64 key of 48 or 80 bytes; a file of raw "
                f"bytes must be exactly 48 or 80 bytes long (this one is {len(raw)})")
        keys.append(_haproxy(decoded))
    if not keys:
        raise ValueError(f"{path}: no ticket key (expected 48 or 80 raw bytes, or base64 lines)")
    if len(keys) >= 2:
        # HAProxy's order: the second-to-last key encrypts; the last is pre-distributed.
        keys.insert(0, keys.pop(-2))
    return keys


def read_key_files(paths: list[str]) -> list[TicketKey]:
    """Every key of the configured files, the encrypting one first."""
    keys: list[TicketKey] = []
    for path in paths:
        keys.extend(read_key_file(Path(path)))
    return keys
