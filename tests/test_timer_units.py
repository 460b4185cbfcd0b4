"""The worker's timers (the wheel, its deadlines, the pending queues) on a real uvloop loop."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections import Counter

import uvloop

from appliance.deadline import Deadline
from appliance.http.exchange import ExchangeState
from appliance.timerwheel import BATCH
from appliance.upstream.pool import PendingQueue


class Owner:
    """Stands in for a connection: owns a deadline whose expiry calls back into it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fired: dict[int, float], key: int) -> None:
        self.loop, self.fired, self.key = loop, fired, key
        self.deadline = Deadline(loop, self.expired)

    def expired(self) -> None:
        self.fired[self.key] = self.loop.time()


def run(main) -> None:
    uvloop.run(main())


async def until(predicate, what: str, seconds: float = 5.0) -> None:
    """Let the loop run until `predicate()` holds (a bound, not a measurement)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while not predicate():
        assert loop.time() < give_up, f"still waiting for {what}"
        await asyncio.sleep(0.01)


class Turns:
    """Counts loop turns (a callback queued for every turn, as ready I/O would be) and what
    a callback recorded in each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.turn = 0
        self.stopped = False
        self.by_turn: Counter[int] = Counter()
        loop.call_soon(self._next)

    def _next(self) -> None:
        self.turn += 1
        if not self.stopped:
            self.loop.call_soon(self._next)

    def record(self, *_: object) -> None:
        self.by_turn.update((self.turn,))

    async def bounded(self, total: int, what: str) -> None:
        """Wait for `total` records, then check no turn had more than BATCH of them."""
        await until(lambda: sum(self.by_turn.values()) == total, what)
        self.stopped = True
        assert max(self.by_turn.values()) <= BATCH
        assert len(self.by_turn) >= total // BATCH


def test_deadlines_fire_once_never_early_and_follow_moves_and_cancels() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: dict[int, float] = {}
        owners = [Owner(loop, fired, key) for key in range(400)]
        due: dict[int, float] = {}
        for key, owner in enumerate(owners):
            owner.deadline.set(0.01 * (key % 30))
            due[key] = loop.time() + 0.01 * (key % 30)
        for key in range(0, 400, 4):  # later: the entry stays in its slot and is refiled from there
            owners[key].deadline.set(0.35)
            due[key] = loop.time() + 0.35
        for key in range(1, 400, 4):  # earlier: refiled at once
            owners[key].deadline.set(0.001)
            due[key] = loop.time() + 0.001
        for key in range(2, 400, 8):
            owners[key].deadline.cancel()
            del due[key]
        for key in range(6, 400, 8):
            owners[key].deadline.clear()
            del due[key]
        await asyncio.sleep(0.6)
        assert set(fired) == set(due)
        assert all(fired[key] >= due[key] for key in due)

    run(main)


def test_a_burst_expires_in_bounded_batches_per_loop_turn() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        turns = Turns(loop)
        deadlines = [Deadline(loop, turns.record) for _ in range(1000)]
        for deadline in deadlines:
            deadline.set(0.05)
        await turns.bounded(1000, "every deadline to expire")

    run(main)


def test_a_cancelled_deadline_does_not_keep_its_owner_alive() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        owner = Owner(loop, {}, 0)
        owner.deadline.set(75)
        owner.deadline.set(80)  # moved later: still one entry
        gone = weakref.ref(owner)
        owner.deadline.cancel()
        del owner
        gc.collect()
        assert gone() is None

    run(main)


def test_a_failing_expiry_does_not_stop_the_others() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        fired: list[int] = []

        def expire(key: int) -> None:
            fired.append(key)
            if key % 10 == 0:
                raise RuntimeError("broken callback")

        deadlines = [Deadline(loop, lambda key=key: expire(key)) for key in range(100)]
        for deadline in deadlines:
            deadline.set(0.01)
        await until(lambda: len(fired) == 100, "every deadline to expire")
        assert len(errors) == 10

    run(main)


def test_a_pending_queue_expires_in_bounded_batches_per_loop_turn() -> None:
    """A hung backend's whole queue times out together: it is answered BATCH per loop turn."""
    class Waiting:  # the two fields of an Exchange a PendingQueue reads
        state = ExchangeState.PENDING
        pending_since = 0.0

    async def main() -> None:
        turns = Turns(asyncio.get_running_loop())
        queue = PendingQueue(turns.loop, 0.05, turns.record)
        for _ in range(1000):
            queue.push(Waiting())
        await turns.bounded(1000, "every queued request to expire")
        assert not queue.entries

    run(main)
