"""Request ids: X-Request-Id values that are cheap to make and unique across workers.

An id is a random 64-bit prefix drawn once per worker process (after fork, so
workers never share one) followed by a per-process counter: 32 hex characters,
one string formatting per request, no system call on the data path.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange

HEADER = b"X-Request-Id"


def generator() -> Callable[[], bytes]:
    """A fresh id source for this process; call it after fork."""
    prefix = os.urandom(8).hex().encode()
    counter = itertools.count(1)
    return lambda: b"%s%016x" % (prefix, next(counter))


def never() -> None:
    """The id source when [proxy] request_id is off."""
    return None


def ensure(exchange: Exchange) -> str:
    """The exchange's id, made now if it has none yet (for a log line before the backend)."""
    rid = exchange.request_id
    if rid is None:
        rid = exchange.request_id = exchange.client.ctx.new_request_id()
    return rid.decode("latin-1") if rid is not None else "-"
