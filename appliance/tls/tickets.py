"""The worker's session-ticket callback over the shared key ring (ctypes, no C extension).

Installed with SSL_CTX_set_tlsext_ticket_key_evp_cb on each TLS listener's initial
context; OpenSSL keeps using it after the SNI callback switches to a vhost context.

- Encrypt: the newest key, a random IV, AES-CBC and HMAC-SHA256 (RFC 5077 layout, as nginx).
- Decrypt: unknown key name → 0 (full handshake). Known → 2 ("renew") when the key is not
  the newest, or always on TLS 1.3: with 1, OpenSSL 3.0 sends no new ticket on a TLS 1.3
  resumption, and TLS 1.3 clients use each ticket once.
- The key name on the wire is derived from the ring key's name and the vhost the ticket
  was issued for, so decryption learns that vhost. The client's new SNI is not known yet
  at that point (SSL_get_servername is still empty), so the resumption cannot be refused
  here; the vhost is noted in the SSL*'s own ex_data, which the connection reads after the
  handshake (`issued_for`). Kept on the SSL*, the note is freed with it: handshakes that
  never reach the data path (aborted, or on a listener without an SNI callback) leave
  nothing behind. A TLS 1.3 session resumed on another vhost than its own then never
  counts as carrying a verified client certificate (appliance/tls/session.py).
  TLS 1.2 resumptions keep the original session's SNI, so they land on their own vhost.

No exception may cross into C: every failure is logged once and returns 0.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from collections.abc import Callable, Iterable

from appliance.tls import libssl
from appliance.tls.keyfiles import TicketKey
from appliance.tls.ring import TicketRing

log = logging.getLogger("rproxyd.tls")

_CIPHERS = {16: libssl.EVP_CIPHER_fetch(None, b"AES-128-CBC", None),
            32: libssl.EVP_CIPHER_fetch(None, b"AES-256-CBC", None)}
_DIGEST = b"SHA256"
# The SSL* ex_data slot where decryption notes the vhost a ticket was issued for, as
# 1 + its index in TicketKeyCallback.vhosts (NULL: no ticket decrypted on this connection).
_ISSUED_FOR = libssl.CRYPTO_get_ex_new_index(libssl.CRYPTO_EX_INDEX_SSL, 0, None, None, None, None)
if _ISSUED_FOR < 0:
    raise RuntimeError("CRYPTO_get_ex_new_index failed")


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
    """Holds the ctypes callback (it must outlive every context it is installed on)."""

    def __init__(self, ring: TicketRing, vhosts: Iterable[str],
                 vhost_of: Callable[[bytes | None], str]) -> None:
        self.ring = ring
        self.vhosts = [*vhosts, ""]
        self.vhost_of = vhost_of
        self.seq = -1
        self.encrypt: dict[str, tuple[bytes, _Key]] = {}
        self.decrypt: dict[bytes, tuple[_Key, int]] = {}  # wire name → key, vhost tag
        self.failed = False
        self.c_callback = libssl.TICKET_CB(self._callback)

    def install(self, ctx_pointer: int) -> None:
        if libssl.SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx_pointer, self.c_callback) != 1:
            raise RuntimeError("SSL_CTX_set_tlsext_ticket_key_evp_cb failed")

    def issued_for(self, ssl_ptr: int) -> str | None:
        """The vhost of the ticket this connection's handshake decrypted (None: no ticket)."""
        tag = libssl.SSL_get_ex_data(ssl_ptr, _ISSUED_FOR)
        return self.vhosts[tag - 1] if tag else None

    def _refresh(self) -> None:
        seq, keys, _ = self.ring.read()
        encrypt: dict[str, tuple[bytes, _Key]] = {}
        decrypt: dict[bytes, tuple[_Key, int]] = {}
        for index, key in enumerate(keys):
            prepared = _Key(key, newest=index == 0)
            for tag, vhost in enumerate(self.vhosts, start=1):
                name = wire_name(key.name, vhost)
                decrypt[name] = (prepared, tag)
                if index == 0:
                    encrypt[vhost] = (name, prepared)
        self.encrypt, self.decrypt, self.seq = encrypt, decrypt, seq

    def _callback(self, ssl_ptr: int, key_name: int, iv: int, cipher_ctx: int, mac_ctx: int,
                  enc: int) -> int:
        try:
            if self.ring.seq() != self.seq:
                self._refresh()
            if enc:
                # After the SNI callback: the name is the one this session is for.
                entry = self.encrypt.get(
                    self.vhost_of(libssl.SSL_get_servername(ssl_ptr, libssl.TLSEXT_NAMETYPE_host_name)))
                if entry is None:
                    return 0  # no key yet: no ticket
                name, key = entry
                ctypes.memmove(key_name, name, 16)
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
            if not self.failed:
                self.failed = True
                log.exception("session-ticket callback failed; handshakes fall back to full ones")
            return 0
