"""A cheap, movable deadline for per-connection timeouts, kept in the worker's timer wheel.

Moving the deadline later is an attribute write: its entry in the wheel
(appliance/timerwheel.py) stays where it is and is refiled only when its slot
comes. Moving it earlier refiles it at once; cancelling takes it out. No loop
timer per connection: the wheel has one, for its earliest slot, and expires due
deadlines in bounded batches per loop turn. On the hot path a connection pushes
its deadline forward on every read without touching the event loop at all.

A deadline fires between 0 and timerwheel.TICK after it passes, later only when
many deadlines expire at once (see the wheel's slack).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from appliance.timerwheel import DUE, TICK, UNFILED, TimerWheel


class Deadline:
    __slots__ = ("_loop", "_wheel", "on_expiry", "slot", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self._loop = loop
        self._wheel = TimerWheel.of(loop)
        self.on_expiry = on_expiry
        self.when: float | None = None  # loop time it expires at; None: not set
        self.slot = UNFILED  # the wheel slot it is filed in, or UNFILED, or DUE (in the backlog)

    def set(self, timeout: float) -> None:
        """Expire `timeout` seconds from now, replacing any earlier setting."""
        when = self._loop.time() + timeout
        self.when = when
        slot = self.slot
        if slot == UNFILED:
            self._wheel.file(self, when)
        elif slot != DUE and when < (slot - 1) * TICK:
            # Earlier than its slot begins: refile. (In the backlog it is due already; the
            # wheel refiles it from there if it moved later.)
            self._wheel.unfile(self)
            self._wheel.file(self, when)

    def clear(self) -> None:
        """Stop the deadline; its wheel entry finds nothing to do when its slot comes."""
        self.when = None

    def cancel(self) -> None:
        """Clear and leave the wheel (on connection close), so nothing keeps the owner alive."""
        self.when = None
        if self.slot >= 0:
            self._wheel.unfile(self)

    def release(self) -> None:
        """Cancel for good, once the owner's connection is gone, and forget the callback.

        The callback is a bound method of the owner, which holds this deadline: a reference
        cycle that only the cyclic GC would free. Released, the owner is freed by reference
        counting when its connection ends (issue 15: a new connection per request made a GC
        generation-0 pass every 60 connections). A later set() expires into nothing.
        """
        self.cancel()
        self.on_expiry = _gone


def _gone() -> None:
    """What a released deadline calls if it is set again (its owner is gone)."""
