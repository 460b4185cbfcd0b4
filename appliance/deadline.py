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

from appliance.timerwheel import UNFILED, TimerWheel


class Deadline:
    """A timeout of its own, calling `on_expiry` (the owner's bound method) when it passes.

    A client connection's read deadline is the connection itself, an entry of the wheel
    with no object of its own (appliance/http/downstream.py); this is for the rarer ones.
    """

    __slots__ = ("_wheel", "on_expiry", "slot", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self._wheel = TimerWheel.of(loop)
        self.on_expiry = on_expiry
        self.when: float | None = None  # loop time it expires at; None: not set
        self.slot = UNFILED  # the wheel slot it is filed in, or UNFILED, or DUE (in the backlog)

    def set(self, timeout: float) -> None:
        """Expire `timeout` seconds from now, replacing any earlier setting."""
        self._wheel.set(self, timeout)

    def clear(self) -> None:
        """Stop the deadline; its wheel entry finds nothing to do when its slot comes."""
        self.when = None

    def cancel(self) -> None:
        """Clear and leave the wheel (on connection close), so nothing keeps the owner alive."""
        self._wheel.cancel(self)

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
