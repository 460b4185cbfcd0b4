"""Pure parts of the process model: value parsing, back-off, state tables, shared memory."""

from __future__ import annotations

import os

import pytest

from appliance.config.values import parse_cpu_list, parse_worker_count
from appliance.process.heartbeat import ACCEPTING, REGION_SIZE, HeartbeatBoard, HeartbeatCell
from appliance.process.slots import ProcState, Slot, SlotState, WorkerProc
from appliance.shm import SharedMemory


def test_cpu_lists_and_worker_counts() -> None:
    assert parse_cpu_list("0-3,6") == [0, 1, 2, 3, 6]
    assert parse_cpu_list([2, 0]) == [2, 0]
    assert parse_cpu_list("") == []
    for bad in ("0-x", "1,1", [-1], [True], 3):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)
    assert parse_worker_count("auto") == 0
    assert parse_worker_count(4) == 4
    for bad in (0, "4", True, -1):
        with pytest.raises(ValueError):
            parse_worker_count(bad)


def _crash(slot: Slot, now: float, lived: float) -> float:
    worker = WorkerProc(pid=1, slot=0, generation=1, cell=0, started=now - lived - 0.1)
    worker.accepting_since = now - lived if lived else 0.0
    slot.started(worker)
    if lived:
        slot.transition(SlotState.SERVING)
    return slot.died(now, backoff=0.5, backoff_max=4.0)


def test_respawn_backoff_doubles_and_resets_after_a_long_life() -> None:
    slot = Slot(0, cpu=None)
    delays = [_crash(slot, 100.0 + i, lived=0.2) for i in range(6)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert _crash(slot, 200.0, lived=60.0) == 0.0  # served longer than the longest back-off
    assert slot.state is SlotState.BACKOFF and slot.respawn_at == 200.0


def test_illegal_transitions_raise() -> None:
    worker = WorkerProc(pid=7, slot=0, generation=1, cell=0, started=0.0)
    worker.transition(ProcState.EXITED)
    with pytest.raises(RuntimeError, match="worker 7 cannot go from exited to accepting"):
        worker.transition(ProcState.ACCEPTING)
    slot = Slot(0, cpu=None)
    slot.transition(SlotState.RETIRED)
    with pytest.raises(RuntimeError):
        slot.transition(SlotState.STARTING)


def test_shared_memory_survives_export_and_adopt() -> None:
    shared = SharedMemory()
    region = shared.region("heartbeat", REGION_SIZE)
    board = HeartbeatBoard(region)
    cell = board.allocate()
    described = shared.export()
    assert os.get_inheritable(region.fd)  # so it outlives exec
    # What the re-executed image does with the description: map the same memory again.
    adopted = SharedMemory.adopt(described).regions["heartbeat"]
    assert adopted.fd == region.fd and not os.get_inheritable(region.fd)
    HeartbeatCell(adopted, cell, 1.0).set_phase(ACCEPTING)
    assert board.read(cell)[1] == ACCEPTING
    with pytest.raises(ValueError):
        shared.region("heartbeat", REGION_SIZE * 2)
