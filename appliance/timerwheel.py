"""One coarse timer wheel per worker loop: every connection deadline, one loop timer.

Deadlines (appliance/deadline.py) are filed in slots of TICK seconds: a deadline at time
`when` goes into slot floor(when / TICK) + 1, whose time is after `when`. The wheel keeps a
single loop timer, for its earliest slot. When a slot's time comes, its deadlines join the
expiry backlog, and the backlog is worked through at most BATCH expiries per loop turn: the
rest waits for the next turn (call_soon), so the loop polls its sockets between batches. A
thousand clients timing out together thus cost the other connections of the worker a few
short pauses instead of one long stall (issue 13). nginx and HAProxy also keep one timer
tree per worker or thread; HAProxy also runs the tasks expired timers wake in bounded
batches (tune.runqueue-depth), while nginx's per-expiry work is cheap enough to do all at
once. Later work (more timers per worker, issue 15) files into this same wheel.

Slack: a deadline fires 0 to TICK after it passes (slot rounding; never early), plus the
time the loop needs to work through the expiries ahead of it in the backlog (BATCH per turn,
each turn also serving whatever I/O is ready). With nothing else due, that is at most
TICK + 1 ms.

Filing is cheap because most deadlines only ever move later: moving a deadline later is an
attribute write (the entry stays in its earlier slot and is refiled when that slot comes);
moving it earlier refiles it at once; cancelling removes it from its slot, so a closed
connection is not kept alive by its stale entry.
"""

from __future__ import annotations

import asyncio
import heapq
import weakref
from collections.abc import Callable
from typing import Protocol

TICK = 0.05  # seconds per slot: the rounding part of the slack
BATCH = 32  # expiries per loop turn, at most
# Entries taken from due slots per loop turn, at most, counting those that moved later and
# are only refiled (a cheap step, so many more of them fit in a turn).
SCAN = 16 * BATCH
UNFILED = -1  # Entry.slot of an entry in no slot
DUE = -2  # Entry.slot of an entry in the expiry backlog (it is never there twice)
# The loop timer is armed this long after a slot's time: uvloop rounds timers to whole
# milliseconds, and a slot must never be taken before its time.
ROUNDING = 0.001



class Entry(Protocol):
    """What the wheel files: a deadline (appliance/deadline.py), a client connection (its read
    deadline, appliance/http/downstream.py), or any later kind of timer.

    The wheel owns `slot`; `when` is set through the wheel's `set` and cleared by the owner
    (None: nothing to do).
    """

    slot: int
    when: float | None
    on_expiry: Callable[[], None]


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimerWheel] = weakref.WeakKeyDictionary()


class TimerWheel:
    """The deadlines of one loop, filed by TICK slot, expired in bounded batches."""

    __slots__ = ("__weakref__", "_armed", "_backlog", "_draining", "_heap", "_loop", "_scheduled",
                 "_slots", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # slot number → its deadlines; a dict (insertion-ordered, O(1) removal) per slot.
        self._slots: dict[int, dict[Entry, None]] = {}
        self._heap: list[int] = []  # slot numbers that have a dict in _slots
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0  # the slot the loop timer is armed for
        self._backlog: list[Entry] = []  # taken from due slots, not yet looked at
        self._draining = 0  # position in _backlog
        self._scheduled = False  # _work is queued for the next loop turn

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> TimerWheel:
        """The wheel of this loop (made on first use)."""
        wheel = _wheels.get(loop)
        if wheel is None:
            wheel = _wheels[loop] = TimerWheel(loop)
        return wheel

    def set(self, entry: Entry, timeout: float) -> None:
        """Have `entry` expire `timeout` seconds from now, replacing any earlier setting.

        Moving an entry later is an attribute write: it stays in its earlier slot and is
        refiled when that slot comes. Moving it earlier refiles it at once.
        """
        when = self._loop.time() + timeout
        entry.when = when
        slot = entry.slot
        if slot == UNFILED:
            self.file(entry, when)
        elif slot != DUE and when < (slot - 1) * TICK:
            # Earlier than its slot begins: refile. (In the backlog it is due already; the
            # wheel refiles it from there if it moved later.)
            self.unfile(entry)
            self.file(entry, when)

    def cancel(self, entry: Entry) -> None:
        """Stop `entry` and take it out of its slot, so the wheel no longer refers to it."""
        entry.when = None
        if entry.slot >= 0:
            self.unfile(entry)

    def file(self, deadline: Entry, when: float) -> None:
        """Put a deadline in the slot for `when` (it must be in no slot now)."""
        slot = int(when / TICK) + 1
        deadline.slot = slot
        entries = self._slots.get(slot)
        if entries is None:
            entries = self._slots[slot] = {}
            heapq.heappush(self._heap, slot)
            if self._timer is None or slot < self._armed:
                self._arm(slot)
        entries[deadline] = None

    def unfile(self, deadline: Entry) -> None:
        """Take a deadline out of its slot (not one in the backlog: that one is checked when reached)."""
        slot = deadline.slot
        if slot >= 0:
            del self._slots[slot][deadline]
            deadline.slot = UNFILED
        # An emptied slot stays in the heap until its time: dropping it is cheaper then.

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = slot
        self._timer = self._loop.call_at(slot * TICK + ROUNDING, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._take_due()
        if not self._scheduled:  # else the queued batch goes on with the grown backlog
            self._work()

    def _take_due(self) -> None:
        """Move the deadlines of every slot whose time has come to the backlog."""
        now = self._loop.time()
        heap, slots, backlog = self._heap, self._slots, self._backlog
        while heap and heap[0] * TICK <= now:
            entries = slots.pop(heapq.heappop(heap))
            for deadline in entries:
                deadline.slot = DUE
            backlog.extend(entries)
        if heap and self._timer is None:
            self._arm(heap[0])

    def _work(self) -> None:
        """Expire up to BATCH deadlines of the backlog; leave the rest for the next loop turn."""
        self._scheduled = False
        backlog = self._backlog
        start = self._draining
        end = min(len(backlog), start + SCAN)
        now = self._loop.time()
        expired = 0
        i = start
        while i < end and expired < BATCH:
            deadline = backlog[i]
            i += 1
            deadline.slot = UNFILED
            when = deadline.when
            if when is None:
                continue  # cleared or cancelled meanwhile
            if when > now:
                self.file(deadline, when)  # moved later: wait in its new slot
                continue
            deadline.when = None
            expired += 1
            try:
                deadline.on_expiry()
            except Exception as exc:  # as the loop does for a failing callback: report, go on
                self._loop.call_exception_handler({"message": "deadline expiry failed", "exception": exc})
        if i < len(backlog):
            self._draining = i
            self._scheduled = True
            self._loop.call_soon(self._work)
        else:
            backlog.clear()
            self._draining = 0
