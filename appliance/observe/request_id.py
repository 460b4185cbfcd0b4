"""Request ids: X-Request-Id values that are cheap to make and unique across workers.

An id is 32 hex characters: a random 64-bit prefix drawn once per worker process (after
fork, so workers never share one) followed by a per-process counter. The counter is kept
as its 16 hex digits and counted up in place, as an odometer: per request that is one or
two digits changed and one copy of the 32 bytes, with no integer formatting and no system
call on the data path (compiled, the digits are C array reads and writes; see
request_id.pxd).
"""

from __future__ import annotations

import os
from binascii import hexlify
from collections.abc import Callable

HEADER = b"X-Request-Id"


class RequestIds:
    """A worker's id source: `next_id()` gives the next id (call `RequestIds()` after fork)."""

    __slots__ = ("_digits",)

    def __init__(self, prefix: bytes | None = None, start: int = 1) -> None:
        """`prefix` (8 bytes) and `start` are for tests; a worker takes a random prefix, from 1."""
        prefix = os.urandom(8) if prefix is None else prefix
        self._digits = bytearray(hexlify(prefix + start.to_bytes(8, "big")))

    def next_id(self) -> bytes:
        """The current id; the counter then moves on by one."""
        digits = self._digits
        current = bytes(digits)
        i = 31
        while i >= 16:  # the low 64 bits wrap to zero after 2**64 ids, leaving the prefix alone
            digit = digits[i]
            if digit == ord("f"):
                digits[i] = ord("0")  # and carry into the digit before
                i -= 1
                continue
            digits[i] = ord("a") if digit == ord("9") else digit + 1
            break
        return current


def generator() -> Callable[[], bytes]:
    """A fresh id source for this process; call it after fork."""
    return RequestIds().next_id


def never() -> None:
    """The id source when [proxy] request_id is off."""
    return None
