"""The worker's session-ticket callback over the shared key ring.

Installed with SSL_CTX_set_tlsext_ticket_key_evp_cb on each TLS listener's initial
context; OpenSSL keeps using it after the SNI callback switches to a vhost context.
Two implementations, chosen once per process when the first callback is made:

- C (`_ticketkeys.so`, built from ticketkeys.c by `make` and the Debian package): the
  handshake never takes the GIL for the ticket. Python still owns the key table: it reads
  the ring and hands the prepared keys to C, which calls back only when the ring changed.
- ctypes (the fallback: no compiled library, or RPROXYD_TICKET_CALLBACK=python): the
  same decisions in Python, about 10 us more per ticket on the test machine.

What both do:
- Encrypt: the newest key, a random IV, AES-CBC and HMAC-SHA256 (RFC 5077 layout, as nginx).
- Decrypt: unknown key name → 0 (full handshake). Known → 2 ("renew") when the key is not
  the newest, or always on TLS 1.3: with 1, OpenSSL 3.0 sends no new ticket on a TLS 1.3
  resumption, and TLS 1.3 clients use each ticket once.
- The key name on the wire is derived from the ring key's name and the vhost the ticket
  was issued for, so decryption learns that vhost. The vhost of a new ticket is the one
  the SNI callback chose (`note_site`), or the only vhost when there is no SNI callback.
  The client's new SNI is not known yet when a ticket is decrypted, so the resumption
  cannot be refused there; the ticket's vhost is noted in the SSL*'s own ex_data, which
  the connection reads after the handshake (`issued_for`). Kept on the SSL*, the notes
  are freed with it: handshakes that never reach the data path leave nothing behind. A
  TLS 1.3 session resumed on another vhost than its own then never counts as carrying a
  verified client certificate (appliance/tls/session.py). TLS 1.2 resumptions keep the
  original session's SNI, so they land on their own vhost.

No exception may cross into C: every failure is logged once and returns 0.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from appliance.tls import libssl
from appliance.tls.keyfiles import TicketKey
from appliance.tls.ring import TicketRing

log = logging.getLogger("rproxyd.tls")

_CIPHERS = {16: libssl.EVP_CIPHER_fetch(None, b"AES-128-CBC", None),
            32: libssl.EVP_CIPHER_fetch(None, b"AES-256-CBC", None)}
_DIGEST = b"SHA256"


def _ex_index() -> int:
    index = libssl.CRYPTO_get_ex_new_index(libssl.CRYPTO_EX_INDEX_SSL, 0, None, None, None, None)
    if index < 0:
        raise RuntimeError("CRYPTO_get_ex_new_index failed")
    return index


# SSL* ex_data slots, each holding a vhost tag: 1 + its index in TicketKeyCallback.vhosts
# (NULL: none). _ISSUED_FOR: the vhost of the ticket decrypted on this connection.
# _SITE: the vhost the SNI callback chose, whose key name new tickets get.
_ISSUED_FOR = _ex_index()
_SITE = _ex_index()

NATIVE_LIBRARY = Path(__file__).with_name("_ticketkeys.so")
_NO_KEY = 0xFFFF
_REFRESH_CB = ctypes.CFUNCTYPE(ctypes.c_int)


def _load_native() -> tuple[ctypes.CDLL | None, str]:
    """The compiled callback library, or None and why the ctypes one is used instead."""
    if os.environ.get("RPROXYD_TICKET_CALLBACK") == "python":
        return None, "RPROXYD_TICKET_CALLBACK=python"
    try:
        lib = ctypes.CDLL(str(NATIVE_LIBRARY))
    except OSError as exc:
        return None, f"no usable {NATIVE_LIBRARY.name} ({exc})"
    lib.rk_configure.restype = ctypes.c_int
    lib.rk_configure.argtypes = [ctypes.c_void_p, _REFRESH_CB, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.rk_set_keys.restype = ctypes.c_int
    lib.rk_set_keys.argtypes = [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
    return lib, str(NATIVE_LIBRARY)


_NATIVE, _NATIVE_SOURCE = _load_native()


def native_callback_error() -> str | None:
    """Why the C callback is not used in this process (None: it is)."""
    return None if _NATIVE is not None else _NATIVE_SOURCE


class _Key:
    """One ring key prepared for OpenSSL: cipher, AES key, and OSSL_PARAMs holding the HMAC key."""

    __slots__ = ("aes", "cipher", "hmac", "newest", "params")

    def __init__(self, key: TicketKey, newest: bool) -> None:
        self.newest = newest
        self.cipher = _CIPHERS[len(key.aes)]
        self.aes = key.aes
        self.hmac = ctypes.create_string_buffer(key.hmac, len(key.hmac))  # kept alive with params
        digest = ctypes.c_char_p(_DIGEST)
        self.params = (libssl.OSSLParam * 3)(
            libssl.OSSLParam(b"key", libssl.OSSL_PARAM_OCTET_STRING,
                             ctypes.cast(self.hmac, ctypes.c_void_p), len(key.hmac),
                             libssl.OSSL_PARAM_UNMODIFIED),
            libssl.OSSLParam(b"digest", libssl.OSSL_PARAM_UTF8_STRING,
                             ctypes.cast(digest, ctypes.c_void_p), len(_DIGEST),
                             libssl.OSSL_PARAM_UNMODIFIED),
            libssl.OSSLParam(None, 0, None, 0, 0),
        )


def wire_name(name: bytes, vhost: str) -> bytes:
    """The 16-byte key name sent in tickets of `vhost` encrypted with ring key `name`."""
    return hashlib.sha256(name + b"\0" + vhost.encode()).digest()[:16]


class TicketKeyCallback:
    """The key table and the callback (which must outlive every context it is installed on).

    With the C library the table lives in C, once per process: the newest TicketKeyCallback
    owns it (a worker makes one).
    """

    def __init__(self, ring: TicketRing, vhosts: Iterable[str], default_vhost: str = "",
                 native: bool | None = None) -> None:
        """`native`: True/False insists on the C or the ctypes callback; None takes C when built."""
        self.ring = ring
        self.vhosts = [*vhosts, ""]
        self.tags = {vhost: tag for tag, vhost in enumerate(self.vhosts, start=1)}
        self.default_tag = self.tags.get(default_vhost, len(self.vhosts))
        self.seq = -1
        # The ctypes callback's table (the C one keeps its own).
        self.keys: list[_Key] = []
        self.decrypt: dict[bytes, tuple[_Key, int]] = {}  # wire name → key, vhost tag
        self.encrypt_names: list[bytes] = []
        self.failed = False
        if native and _NATIVE is None:
            raise RuntimeError(f"the C ticket callback is not available: {_NATIVE_SOURCE}")
        self.lib = _NATIVE if native is not False else None
        self.source = _NATIVE_SOURCE if native is not False else "asked for"
        if self.lib is not None:
            self._seq_word = ctypes.c_uint64.from_buffer(ring.view)
            self._refresh_cb = _REFRESH_CB(self._native_refresh)
            if not self.lib.rk_configure(ctypes.addressof(self._seq_word), self._refresh_cb,
                                        _ISSUED_FOR, _SITE, self.default_tag):
                raise RuntimeError("the C ticket callback could not fetch AES-CBC")
            self.c_callback = ctypes.cast(self.lib.rk_callback, libssl.TICKET_CB)
        else:
            self.c_callback = libssl.TICKET_CB(self._callback)

    def implementation(self) -> str:
        """Which callback this is and why, for the start-up log."""
        return f"{'C' if self.lib is not None else 'ctypes'} ({self.source})"

    def install(self, ctx_pointer: int) -> None:
        if libssl.SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx_pointer, self.c_callback) != 1:
            raise RuntimeError("SSL_CTX_set_tlsext_ticket_key_evp_cb failed")

    def note_site(self, ssl_ptr: int, vhost: str) -> None:
        """Called by the SNI callback: tickets of this connection are issued for `vhost`."""
        libssl.SSL_set_ex_data(ssl_ptr, _SITE, self.tags.get(vhost, len(self.vhosts)))

    def issued_for(self, ssl_ptr: int) -> str | None:
        """The vhost of the ticket this connection's handshake decrypted (None: no ticket)."""
        tag = libssl.SSL_get_ex_data(ssl_ptr, _ISSUED_FOR)
        return self.vhosts[tag - 1] if tag else None

    def _refresh(self) -> None:
        seq, keys, _ = self.ring.read()
        names = [(wire_name(key.name, vhost), index, tag)
                 for index, key in enumerate(keys) for tag, vhost in enumerate(self.vhosts, start=1)]
        # The key name of new tickets, by vhost tag - 1 (none until the ring has a key).
        self.encrypt_names = [wire_name(keys[0].name, vhost) for vhost in self.vhosts] if keys else []
        if self.lib is not None:
            blob = self._pack(keys, sorted(names))
            if not self.lib.rk_set_keys(seq, blob, len(blob)):
                raise RuntimeError("the C ticket callback refused the key table")
        else:  # the ctypes callback's own table
            self.keys = [_Key(key, newest=index == 0) for index, key in enumerate(keys)]
            self.decrypt = {name: (self.keys[index], tag) for name, index, tag in names}
        self.seq = seq

    def _pack(self, keys: list[TicketKey], names: list[tuple[bytes, int, int]]) -> bytes:
        """The table in ticketkeys.c's layout: keys, wire names sorted, encryption name per tag."""
        parts = [struct.pack("=III", len(keys), len(names), len(self.vhosts))]
        parts += [struct.pack("=BBBx32s32s", len(key.aes), len(key.hmac), index == 0, key.aes, key.hmac)
                  for index, key in enumerate(keys)]
        parts += [struct.pack("=16sHH", *entry) for entry in names]
        parts += ([struct.pack("=16sH", name, 0) for name in self.encrypt_names] if keys
                  else [struct.pack("=16sH", b"", _NO_KEY)] * len(self.vhosts))
        return b"".join(parts)

    def _native_refresh(self) -> int:
        """Called from C when the ring's sequence moved: 1 with a new table, 0 (no ticket) on failure."""
        try:
            self._refresh()
            return 1
        except BaseException:
            self._report_failure()
            return 0

    def _report_failure(self) -> None:
        if not self.failed:
            self.failed = True
            log.exception("session-ticket callback failed; handshakes fall back to full ones")

    def _callback(self, ssl_ptr: int, key_name: int, iv: int, cipher_ctx: int, mac_ctx: int,
                  enc: int) -> int:
        try:
            if self.ring.seq() != self.seq:
                self._refresh()
            if enc:
                if not self.keys:
                    return 0  # no key yet: no ticket
                key = self.keys[0]
                # After the SNI callback: the vhost it noted, else the only vhost.
                tag = libssl.SSL_get_ex_data(ssl_ptr, _SITE) or self.default_tag
                ctypes.memmove(key_name, self.encrypt_names[tag - 1], 16)
                if libssl.RAND_bytes(iv, 16) != 1:
                    return -1
                if not libssl.EVP_EncryptInit_ex(cipher_ctx, key.cipher, None, key.aes, iv):
                    return -1
                if not libssl.EVP_MAC_CTX_set_params(mac_ctx, key.params):
                    return -1
                return 1
            found = self.decrypt.get(ctypes.string_at(key_name, 16))
            if found is None:
                return 0  # unknown or expired key: full handshake
            key, tag = found
            libssl.SSL_set_ex_data(ssl_ptr, _ISSUED_FOR, tag)
            if not libssl.EVP_DecryptInit_ex(cipher_ctx, key.cipher, None, key.aes, iv):
                return -1
            if not libssl.EVP_MAC_CTX_set_params(mac_ctx, key.params):
                return -1
            if not key.newest or libssl.SSL_version(ssl_ptr) == libssl.TLS1_3_VERSION:
                return 2  # resume and issue a fresh ticket
            return 1
        except BaseException:
            self._report_failure()
            return 0
