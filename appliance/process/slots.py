"""Worker processes and worker slots, each with one transition table.

A WorkerProc is one forked process; a Slot is a position (0..n-1) in a
generation, pinned to one CPU, that always wants a worker. A crashed worker
leaves its slot in BACKOFF until the slot's next worker is spawned. Nothing but
`transition()` assigns `.state` (the mechanism: appliance/statemachine.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from appliance.config.schema import Config
from appliance.statemachine import Transitions


class ProcState(enum.Enum):
    BOOTING = "booting"  # forked, not yet accepting
    ACCEPTING = "accepting"  # serving its slot's sockets
    DRAINING = "draining"  # told to stop (SIGTERM or a fast-stop signal); finishing in-flight work
    EXITED = "exited"  # reaped


_PROC_MOVES = Transitions("worker", {
    ProcState.BOOTING: (ProcState.ACCEPTING, ProcState.DRAINING, ProcState.EXITED),
    ProcState.ACCEPTING: (ProcState.DRAINING, ProcState.EXITED),
    ProcState.DRAINING: (ProcState.EXITED,),
})


@dataclass(slots=True, eq=False)
class WorkerProc:
    pid: int
    slot: int
    generation: int
    cell: int  # heartbeat cell
    started: float  # monotonic
    state: ProcState = ProcState.BOOTING
    accepting_since: float = 0.0
    kill_at: float = 0.0  # once DRAINING: when SIGKILL ends a drain that overran
    quit_at: float = 0.0  # on a stop: when SIGQUIT closes what the drain kept (upgrade tunnels)
    abort_sent: float = 0.0  # when SIGABRT went out for a missed heartbeat or deadline
    exit_status: int | None = None
    boot_report: int = -1  # read end of the pipe the worker tells a boot failure's cause by

    def transition(self, new: ProcState) -> None:
        self.state = _PROC_MOVES.check(self.state, new, self.pid)

    @property
    def alive(self) -> bool:
        return self.state is not ProcState.EXITED


class SlotState(enum.Enum):
    STARTING = "starting"  # its worker is booting
    SERVING = "serving"  # its worker is accepting
    BACKOFF = "backoff"  # its worker died; a new one is spawned at `respawn_at`
    RETIRED = "retired"  # its generation was replaced or the supervisor is stopping


_SLOT_MOVES = Transitions("slot", {
    SlotState.STARTING: (SlotState.SERVING, SlotState.BACKOFF, SlotState.RETIRED),
    SlotState.SERVING: (SlotState.BACKOFF, SlotState.RETIRED),
    SlotState.BACKOFF: (SlotState.STARTING, SlotState.RETIRED),
})


@dataclass(slots=True, eq=False)
class Slot:
    index: int
    cpu: int | None
    state: SlotState = SlotState.BACKOFF  # nothing running yet; spawn is due at respawn_at
    worker: WorkerProc | None = None
    respawn_at: float = 0.0
    crashes: int = 0  # consecutive quick deaths, for the back-off

    def transition(self, new: SlotState) -> None:
        self.state = _SLOT_MOVES.check(self.state, new, self.index)

    def started(self, worker: WorkerProc) -> None:
        self.transition(SlotState.STARTING)
        self.worker = worker

    def died(self, now: float, backoff: float, backoff_max: float) -> float:
        """Schedule the next worker: at once the first time, then backing off; return the wait."""
        worker = self.worker
        lived = now - worker.accepting_since if worker and worker.accepting_since else 0.0
        # A worker that served for longer than the longest back-off was not crash-looping.
        self.crashes = 1 if lived > backoff_max else self.crashes + 1
        delay = 0.0 if self.crashes == 1 else min(backoff * 2 ** (self.crashes - 2), backoff_max)
        self.transition(SlotState.BACKOFF)
        self.worker = None
        self.respawn_at = now + delay
        return delay


@dataclass(slots=True, eq=False)
class Generation:
    """One configuration and the slots running it."""

    number: int
    config: Config
    slots: list[Slot] = field(default_factory=list)

    def workers(self) -> list[WorkerProc]:
        return [slot.worker for slot in self.slots if slot.worker is not None]

    def all_serving(self) -> bool:
        return all(slot.state is SlotState.SERVING for slot in self.slots)

    def serving_count(self) -> int:
        return sum(slot.state is SlotState.SERVING for slot in self.slots)
