"""Error-log lines for events that can come in floods, sampled: a few one by one, then a count.

A thousand clients hitting a timeout together would otherwise write a thousand lines, each
a synchronous write() from the worker's loop. Per LIMIT lines in an INTERVAL the rest are
only counted, and one summary line says how many were left out; the metric that counts the
events (named in the summary) has every one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

LIMIT = 10  # lines written one by one per interval, per worker
INTERVAL = 1.0  # seconds


class SampledLog:
    """Lines about one kind of event: at most LIMIT per INTERVAL, then one summary line."""

    __slots__ = ("_left", "_level", "_logger", "_loop", "_metric", "_suppressed", "_timer", "_what",
                 "_window_end")

    def __init__(self, logger: logging.Logger, loop: asyncio.AbstractEventLoop, what: str,
                 metric: str, level: int = logging.INFO) -> None:
        self._logger = logger
        self._level = level
        self._loop = loop
        self._what = what  # the events, plural, for the summary line
        self._metric = metric  # the metric that counts every one
        self._left = 0
        self._window_end = 0.0
        self._suppressed = 0
        self._timer: asyncio.TimerHandle | None = None

    def log(self, msg: str, *args: object, extra: dict[str, Any] | None = None) -> None:
        now = self._loop.time()
        if now >= self._window_end:
            self._window_end = now + INTERVAL
            self._left = LIMIT
        if self._left:
            self._left -= 1
            self._logger.log(self._level, msg, *args, extra=extra)
            return
        self._suppressed += 1
        if self._timer is None:
            self._timer = self._loop.call_at(self._window_end, self._summary)

    def _summary(self) -> None:
        self._timer = None
        count, self._suppressed = self._suppressed, 0
        self._logger.log(self._level, "%d more %s in the last %g s not logged one by one (%s counts "
                         "them all)", count, self._what, INTERVAL, self._metric)
