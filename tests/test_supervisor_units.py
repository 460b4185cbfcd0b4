"""Parts of the process model without processes: value parsing, back-off, state tables,
shared memory, the supervisor's listening sockets (real ones, on loopback)."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from appliance.config.schema import ListenerConfig
from appliance.config.values import Address, parse_cpu_list, parse_worker_count
from appliance.process.heartbeat import ACCEPTING, REGION_SIZE, HeartbeatBoard, HeartbeatCell
from appliance.process.slots import ProcState, Slot, SlotState, WorkerProc
from appliance.process.sockets import ListenerSet, listener_key
from appliance.process.upgrade import CheckResult, UpgradeCheck
from appliance.shm import SharedMemory
from tests.support import free_port


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


def _listener(name: str, port: int) -> ListenerConfig:
    return ListenerConfig(name=name, bind=Address("127.0.0.1", port), backlog=16)


def _sockets(listeners: ListenerSet, listener: ListenerConfig) -> list[socket.socket]:
    return listeners.by_key[listener_key(listener)].sockets


def _listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def test_staged_slot_sockets_get_no_connections_and_close_on_rollback() -> None:
    l0 = _listener("l0", free_port())
    listeners = ListenerSet()
    listeners.prepare([l0], 1)
    listeners.commit([l0])
    first = _sockets(listeners, l0)[0]
    listeners.prepare([l0], 3)
    staged = _sockets(listeners, l0)[1:]
    assert _listening(first) and len(staged) == 2 and not any(map(_listening, staged))
    # Only the pending generation's workers get the staged sockets.
    assert listeners.for_slot([l0], 0, 1) == {"l0": [first]}
    assert listeners.for_slot([l0], 1, 3, staged=True) == {"l0": [staged[0]]}
    # The kernel routes nothing to a socket that does not listen: every connection waits
    # on the one socket that has an acceptor.
    first.settimeout(2)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", l0.bind.port), timeout=2):
            first.accept()[0].close()
    listeners.rollback()
    assert _sockets(listeners, l0) == [first]
    assert all(sock.fileno() == -1 for sock in staged)
    # Committed, the grown sockets belong to the generation that serves.
    listeners.prepare([l0], 2)
    listeners.commit([l0])
    assert listeners.for_slot([l0], 1, 2) == {"l0": [_sockets(listeners, l0)[1]]}
    listeners.close_all()


def test_prepare_failing_partway_closes_every_socket_it_opened() -> None:
    l0 = _listener("l0", free_port())
    listeners = ListenerSet()
    listeners.prepare([l0], 1)
    listeners.commit([l0])
    before = list(_sockets(listeners, l0))
    with socket.create_server(("127.0.0.1", free_port())) as taken:
        l1 = _listener("l1", taken.getsockname()[1])
        l2 = _listener("l2", free_port())
        # l0 grows and l2 opens before l1 fails its bind: all of it has to go again.
        with pytest.raises(OSError, match="listener l1: cannot bind"):
            listeners.prepare([l0, l2, l1], 2)
    assert list(listeners.by_key) == [listener_key(l0)]
    assert _sockets(listeners, l0) == before
    with socket.create_server(("127.0.0.1", l2.bind.port)):
        pass  # nothing of ours holds l2's port any more
    listeners.close_all()


def _check(code: str, timeout: float) -> tuple[UpgradeCheck, CheckResult | None]:
    started = time.monotonic()
    check = UpgradeCheck([sys.executable, "-c", code], started, timeout)
    return check, check.poll(started)  # never waits: the check has not even started


def _outcome(check: UpgradeCheck) -> CheckResult:
    deadline = time.monotonic() + 10
    while (result := check.poll(time.monotonic())) is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return result


def test_upgrade_check_reports_its_output_and_overruns() -> None:
    check, first = _check("import sys; print('bad'); print('worse', file=sys.stderr); sys.exit(1)", 10)
    assert first is None
    assert _outcome(check) == CheckResult(False, "bad; worse")
    check, _ = _check("print('rproxyd: configuration is OK')", 10)
    assert _outcome(check) == CheckResult(True, "rproxyd: configuration is OK")
    check, _ = _check("import time; time.sleep(30)", 0.2)
    started = time.monotonic()
    assert _outcome(check) == CheckResult(False, "the check took longer than 0.2s")
    assert time.monotonic() - started < 2  # killed at its deadline
