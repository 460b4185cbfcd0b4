"""The worker's side of OCSP stapling: the C status callback over the shared response slots.

The stdlib `ssl` module has no server-side stapling API, so `_ocspstaple.so` (built from
ocspstaple.c) is installed with SSL_CTX_set_tlsext_status_cb on every context of a
listener with `ocsp_stapling`. On a handshake whose client asks for the status, it finds
the served certificate's slot in the supervisor's region (stapler.py) by fingerprint and
staples its response: no Python call, no GIL. Without the library a worker staples
nothing and says so once.

The region is the supervisor's (`use_region`, before the first fork); workers inherit
the mapping. A worker run on its own gets an empty private region: no staples.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
from pathlib import Path

from appliance.shm import SharedRegion

log = logging.getLogger("rproxyd.tls")

REGION_NAME = "tls-ocsp"
SLOTS = 64
SLOT_SIZE = 8192  # header (40 bytes) and a DER response; real ones are 1-4 KiB
REGION_SIZE = SLOTS * SLOT_SIZE
NATIVE_LIBRARY = Path(__file__).with_name("_ocspstaple.so")

_region: SharedRegion | None = None
_lib: ctypes.CDLL | None = None
_anchor: ctypes.Array[ctypes.c_char] | None = None  # keeps the buffer export the C side reads
_missing_reported = False


def use_region(region: SharedRegion) -> None:
    """The supervisor's slots, which workers forked from now on read."""
    global _region
    _region = region


def _load() -> ctypes.CDLL | None:
    global _lib, _anchor, _region, _missing_reported
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(str(NATIVE_LIBRARY))
    except OSError as exc:
        if not _missing_reported:
            _missing_reported = True
            log.error("OCSP stapling off: no usable %s (%s)", NATIVE_LIBRARY.name, exc)
        return None
    lib.os_configure.restype = ctypes.c_int
    lib.os_configure.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
    lib.os_install.restype = ctypes.c_int
    lib.os_install.argtypes = [ctypes.c_void_p]
    if _region is None:
        _region = SharedRegion(REGION_NAME, -1, REGION_SIZE, mmap.mmap(-1, REGION_SIZE))
    _anchor = (ctypes.c_char * REGION_SIZE).from_buffer(_region.view)
    if not lib.os_configure(ctypes.addressof(_anchor), SLOTS, SLOT_SIZE):
        raise RuntimeError("the OCSP stapling callback refused its region layout")
    _lib = lib
    return lib


def install(ctx_pointer: int) -> None:
    """Staple on this server context (every context of a stapling listener gets it)."""
    lib = _load()
    if lib is not None and lib.os_install(ctx_pointer) != 1:
        raise RuntimeError("SSL_CTX_set_tlsext_status_cb failed")
