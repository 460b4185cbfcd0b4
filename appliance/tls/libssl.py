"""ctypes bindings to the system libssl that the stdlib `ssl` module is linked against.

The stdlib has no API for ticket-key callbacks, per-connection verify modes, TLS 1.3
cipher suites or the session timeout; libssl has. The wheels of cryptography/pyOpenSSL
carry their own OpenSSL, so their objects must never meet these functions: only
pointers taken from stdlib `ssl` objects are passed here.
"""

from __future__ import annotations

import ctypes
import ssl
from ctypes import c_char_p, c_int, c_long, c_uint64, c_ulong, c_void_p

libssl = ctypes.CDLL("libssl.so.3")
libcrypto = ctypes.CDLL("libcrypto.so.3")


def _bind(lib: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> ctypes._CFuncPtr:
    func = getattr(lib, name)
    func.restype = restype
    func.argtypes = list(argtypes)
    return func


SSL_CTX_get_options = _bind(libssl, "SSL_CTX_get_options", c_uint64, c_void_p)
SSL_CTX_set_timeout = _bind(libssl, "SSL_CTX_set_timeout", c_long, c_void_p, c_long)
SSL_CTX_set_ciphersuites = _bind(libssl, "SSL_CTX_set_ciphersuites", c_int, c_void_p, c_char_p)
SSL_CTX_ctrl = _bind(libssl, "SSL_CTX_ctrl", c_long, c_void_p, c_int, c_long, c_void_p)
SSL_get_SSL_CTX = _bind(libssl, "SSL_get_SSL_CTX", c_void_p, c_void_p)
SSL_set_verify = _bind(libssl, "SSL_set_verify", None, c_void_p, c_int, c_void_p)
SSL_set_verify_depth = _bind(libssl, "SSL_set_verify_depth", None, c_void_p, c_int)
SSL_get_verify_result = _bind(libssl, "SSL_get_verify_result", c_long, c_void_p)
SSL_get0_param = _bind(libssl, "SSL_get0_param", c_void_p, c_void_p)
SSL_version = _bind(libssl, "SSL_version", c_int, c_void_p)
SSL_get_servername = _bind(libssl, "SSL_get_servername", c_char_p, c_void_p, c_int)
SSL_get_wbio = _bind(libssl, "SSL_get_wbio", c_void_p, c_void_p)
BIO_ctrl_pending = _bind(libcrypto, "BIO_ctrl_pending", ctypes.c_size_t, c_void_p)
X509_VERIFY_PARAM_set_flags = _bind(libcrypto, "X509_VERIFY_PARAM_set_flags", c_int, c_void_p, c_ulong)
# Per-connection application data: the ticket callback leaves a note on the SSL* itself, so
# it lives and dies with the connection (SSL_get_ex_new_index is a macro over this one).
CRYPTO_get_ex_new_index = _bind(libcrypto, "CRYPTO_get_ex_new_index", c_int, c_int, c_long, c_void_p,
                                c_void_p, c_void_p, c_void_p)
SSL_set_ex_data = _bind(libssl, "SSL_set_ex_data", c_int, c_void_p, c_int, c_void_p)
SSL_get_ex_data = _bind(libssl, "SSL_get_ex_data", c_void_p, c_void_p, c_int)

TICKET_CB = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_int)
SSL_CTX_set_tlsext_ticket_key_evp_cb = _bind(
    libssl, "SSL_CTX_set_tlsext_ticket_key_evp_cb", c_int, c_void_p, TICKET_CB)
RAND_bytes = _bind(libcrypto, "RAND_bytes", c_int, c_void_p, c_int)
# Fetched once: the legacy EVP_aes_*_cbc() objects make every EVP_EncryptInit_ex fetch again.
EVP_CIPHER_fetch = _bind(libcrypto, "EVP_CIPHER_fetch", c_void_p, c_void_p, c_char_p, c_char_p)
EVP_EncryptInit_ex = _bind(libcrypto, "EVP_EncryptInit_ex", c_int, c_void_p, c_void_p, c_void_p,
                           c_char_p, c_void_p)
EVP_DecryptInit_ex = _bind(libcrypto, "EVP_DecryptInit_ex", c_int, c_void_p, c_void_p, c_void_p,
                           c_char_p, c_void_p)
EVP_MAC_CTX_set_params = _bind(libcrypto, "EVP_MAC_CTX_set_params", c_int, c_void_p, c_void_p)

TLS1_3_VERSION = 0x0304
SSL_VERIFY_NONE = 0
SSL_VERIFY_PEER = 1
SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 2
X509_V_FLAG_CRL_CHECK = 0x4
X509_V_OK = 0
TLSEXT_NAMETYPE_host_name = 0
SSL_CTRL_MODE = 33
SSL_MODE_NO_AUTO_CHAIN = 0x8
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_SESS_CACHE_OFF = 0
CRYPTO_EX_INDEX_SSL = 0

# The C pointer sits right after PyObject_HEAD in `_ssl._SSLContext`, and after
# PyObject_HEAD plus the socket reference in `_ssl._SSLSocket` (CPython 3.11 `_ssl.c`).
_CTX_OFFSET = object.__basicsize__
_SSL_OFFSET = object.__basicsize__ + ctypes.sizeof(c_void_p)


class OSSLParam(ctypes.Structure):
    """OpenSSL 3's OSSL_PARAM: how a MAC key and digest are handed to EVP_MAC_CTX."""

    _fields_ = [("key", c_char_p), ("data_type", ctypes.c_uint), ("data", c_void_p),
                ("data_size", ctypes.c_size_t), ("return_size", ctypes.c_size_t)]


OSSL_PARAM_UTF8_STRING = 4
OSSL_PARAM_OCTET_STRING = 5
OSSL_PARAM_UNMODIFIED = ctypes.c_size_t(-1).value


def ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The SSL_CTX* behind a stdlib context, checked against the options it reports."""
    pointer = c_void_p.from_address(id(ctx) + _CTX_OFFSET).value
    if not pointer or SSL_CTX_get_options(pointer) != int(ctx.options):
        raise RuntimeError("cannot reach the SSL_CTX of a stdlib ssl context (unexpected Python build)")
    return pointer


def ssl_pointer(sslobj: ssl.SSLObject) -> int:
    """The SSL* behind a stdlib SSLObject (or its inner `_ssl._SSLSocket`)."""
    inner = getattr(sslobj, "_sslobj", sslobj)
    return c_void_p.from_address(id(inner) + _SSL_OFFSET).value or 0


def self_test() -> None:
    """Refuse to start when the pointer layout differs from what this module assumes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pointer = ctx_pointer(ctx)
    probe = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    if SSL_get_SSL_CTX(ssl_pointer(probe)) != pointer:
        raise RuntimeError("cannot reach the SSL of a stdlib SSLObject (unexpected Python build)")
