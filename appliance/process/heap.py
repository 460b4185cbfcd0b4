"""glibc's heap tuning for a worker: keep freed memory instead of trimming it at once.

A body read from a backend is a bytes object as large as uvloop's read (up to 256 KiB). With
glibc's dynamic thresholds, freeing those trims the heap top (brk) and the next read faults
the pages in again: in an HTTP/2 1 MiB GET, page faults, brk and munmap took about a fifth of
the worker's CPU. Fixed thresholds keep up to TRIM_THRESHOLD of freed memory in the heap,
as nginx keeps its reused buffers; the memory kept per worker is bounded by it.
"""

from __future__ import annotations

import ctypes

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Free memory at the heap top kept before trimming; allocations below MMAP_THRESHOLD come
# from the heap (setting either turns glibc's dynamic adjustment off).
TRIM_THRESHOLD = 16 * 1024 * 1024
MMAP_THRESHOLD = 1024 * 1024


def keep_heap() -> None:
    """Set the thresholds for this process; nothing to do on a libc without mallopt."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
