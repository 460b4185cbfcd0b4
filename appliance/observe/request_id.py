"""Request ids: X-Request-Id values that are cheap to make and unique across workers.

An id is a random 64-bit prefix drawn once per worker process (after fork, so
workers never share one) followed by a per-process counter: 32 hex characters,
one string formatting per request, no system call on the data path.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

HEADER = b"X-Request-Id"


def generator() -> Callable[[], bytes]:
    """A fresh id source for this process; call it after fork."""
    prefix = os.urandom(8).hex().encode()
    counter = itertools.count(1)
    return lambda: b"%s%016x" % (prefix, next(counter))


def never() -> None:
    """The id source when [proxy] request_id is off."""
    return None
