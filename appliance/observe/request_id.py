"""Request ids: X-Request-Id values that are cheap to make and unique across workers.

An id is a random 64-bit prefix drawn once per worker process (after fork, so
workers never share one) followed by a per-process counter: 32 hex characters.
Per request that is the next count, `to_bytes` and `hexlify`: half the time of the
bytes formatting (`b"%s%016x"`) it replaces (timeit); no system call on the data path.
"""

from __future__ import annotations

import itertools
import os
from binascii import hexlify
from collections.abc import Callable

HEADER = b"X-Request-Id"


def generator() -> Callable[[], bytes]:
    """A fresh id source for this process; call it after fork."""
    # The prefix in the high 64 bits, the counter in the low ones: the 16 bytes' hex is the
    # prefix's hex followed by the counter's, zero-padded to 16 digits.
    counter = itertools.count((int.from_bytes(os.urandom(8), "big") << 64) + 1)
    return lambda: hexlify(next(counter).to_bytes(16, "big"))


def never() -> None:
    """The id source when [proxy] request_id is off."""
    return None
