"""A cheap, movable deadline for per-connection timeouts.

Moving the deadline is an attribute write: the loop timer is only re-armed when
it fires early (the deadline moved later) or when the deadline moves earlier
than the armed timer. On the hot path a connection typically pushes its
deadline forward on every read without touching the event loop's timer heap
(aiohttp's keep-alive handling does the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_armed_at", "_handle", "_loop", "_on_expiry", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self._when: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0

    def set(self, timeout: float) -> None:
        """Expire `timeout` seconds from now, replacing any earlier setting."""
        when = self._loop.time() + timeout
        self._when = when
        handle = self._handle
        if handle is None:
            self._arm(when)
        elif self._armed_at > when:
            handle.cancel()
            self._arm(when)

    def clear(self) -> None:
        """Stop the deadline; an armed timer finds nothing to do when it fires."""
        self._when = None

    def cancel(self) -> None:
        """Clear and release the loop timer (on connection close)."""
        self._when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def active(self) -> bool:
        return self._when is not None

    def _arm(self, when: float) -> None:
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        when = self._when
        if when is None:
            return
        if self._loop.time() < when:
            self._arm(when)
            return
        self._when = None
        self._on_expiry()
