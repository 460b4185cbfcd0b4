"""The supervisor with real processes on loopback: rproxyd, a demo origin, raw-socket clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support_proc import (
    GREETING,
    Load,
    LoadResult,
    NotifySocket,
    Rproxyd,
    config_text,
    demo_origin,
    get,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

StartFn = Callable[..., Rproxyd]


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    with demo_origin() as port:
        yield port


@pytest.fixture
def start(tmp_path: Path, origin: int) -> Iterator[StartFn]:
    started: list[Rproxyd] = []

    def _start(extra: str = "", env: dict[str, str] | None = None, listeners: int = 1,
               process: str = "") -> Rproxyd:
        proxy = Rproxyd(tmp_path, config_text(origin, tmp_path / "run", extra, listeners, process), env)
        started.append(proxy)
        return proxy

    yield _start
    for proxy in started:
        proxy.stop(signal.SIGQUIT)


def _rewrite(proxy: Rproxyd, origin: int, extra: str = "", listeners: int = 1, process: str = "") -> None:
    proxy.config_path.write_text(config_text(origin, proxy.run_dir, extra, listeners, process))


def _no_failures(result: LoadResult) -> None:
    assert not result.failures, f"failed requests: {dict(result.failures)}"


def test_twenty_reloads_under_load_lose_nothing(start: StartFn) -> None:
    proxy = start()
    with Load(proxy.address, fresh=3, keepalive=2) as load:
        load.wait_requests(50)
        for generation in range(2, 22):
            done = proxy.reload()
            assert done.returncode == 0, done.stderr
            assert f"generation {generation}" in done.stdout
            load.wait_requests(20)
        result = load.stop()
    _no_failures(result)
    assert result.ok > 500
    # Zero resets: a draining worker closes keep-alive connections with a lingering close, so
    # a request racing that close sees a clean EOF (which RFC 9112 9.3.1 lets a client retry).
    assert not result.retried_idle_closes.get("reset"), dict(result.retried_idle_closes)
    status = proxy.wait_running(generation=21)
    # Every old worker drained and exited; only the current generation is left.
    wait_for(lambda: len(proxy.status()["workers"]) == len(proxy.current_workers()), 10, "old workers gone")
    print(f"20 reloads: {result.ok} requests, 0 failed, "
          f"keep-alive retries after idle close {dict(result.retried_idle_closes)}; "
          f"gen {status['generation']}")


def test_sigkill_worker_fails_only_its_own_requests_and_slot_recovers(start: StartFn) -> None:
    proxy = start()
    victim, survivor = proxy.current_workers()[:2]
    with Load(proxy.address, fresh=4, keepalive=0) as load:
        load.wait_requests(100)
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced() -> bool:
            slot = [w for w in proxy.current_workers() if w["slot"] == victim["slot"]]
            return bool(slot) and slot[0]["pid"] != victim["pid"] and slot[0]["state"] == "accepting"

        wait_for(replaced, 1.0, "the killed worker's slot serving again within 1 s")
        recovered_after = time.monotonic() - killed_at
        load.wait_requests(200)
        result = load.stop()
    # At most one in-flight request per client thread can have been on the killed worker,
    # and none may fail once the slot is back.
    assert sum(result.failures.values()) <= 4, dict(result.failures)
    assert all(t <= killed_at + recovered_after for t in result.failure_times)
    pids = {w["slot"]: w["pid"] for w in proxy.current_workers()}
    assert pids[survivor["slot"]] == survivor["pid"], "the other worker must not be touched"
    assert "killed by SIGKILL" in proxy.log()
    print(f"slot back in {recovered_after * 1000:.0f} ms; failures {dict(result.failures)}")


def test_invalid_config_on_reload_keeps_old_generation(start: StartFn, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    proxy = start(env={"NOTIFY_SOCKET": str(notify.path)})
    before = proxy.current_workers()
    good = proxy.config_path.read_text()
    proxy.config_path.write_text(good + "\n[limits]\nmax_header_bytes = \"lots\"\n")
    with Load(proxy.address, fresh=2, keepalive=1) as load:
        load.wait_requests(30)
        done = proxy.reload()
        load.wait_requests(30)
        result = load.stop()
    assert done.returncode == 1
    assert "limits.max_header_bytes" in done.stderr and "generation 1 keeps serving" in done.stderr
    _no_failures(result)
    status = proxy.status()
    assert status["generation"] == 1 and status["reload"]["ok"] is False
    assert proxy.current_workers() == before
    assert "reload failed" in proxy.log()
    messages = notify.poll()
    reloading = next(i for i, m in enumerate(messages) if m.get("RELOADING") == "1")
    after = messages[reloading + 1:]
    assert any(m.get("READY") == "1" and "reload failed" in m.get("STATUS", "") for m in after), messages
    # And a fixed file reloads fine afterwards.
    proxy.config_path.write_text(good)
    assert proxy.reload().returncode == 0
    notify.close()


def test_notify_ready_reloading_stopping_watchdog(start: StartFn, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    proxy = start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"})
    wait_for(lambda: any(m.get("READY") == "1" for m in notify.poll()), 5, "READY=1")
    first_ready = next(m for m in notify.messages if m.get("READY") == "1")
    assert "generation 1" in first_ready["STATUS"] and "workers serving" in first_ready["STATUS"]
    assert proxy.reload().returncode == 0
    assert proxy.stop(signal.SIGTERM) == 0
    messages = notify.poll()
    kinds = [k for m in messages for k in ("READY", "RELOADING", "STOPPING") if m.get(k) == "1"]
    assert kinds == ["READY", "RELOADING", "READY", "STOPPING"], kinds
    reloading = next(m for m in messages if m.get("RELOADING") == "1")
    usec = int(reloading["MONOTONIC_USEC"])
    assert abs(usec / 1e6 - time.monotonic()) < 60
    assert any("generation 2" in m.get("STATUS", "") for m in messages)
    assert sum(m.get("WATCHDOG") == "1" for m in messages) >= 2  # every 0.1 s while running
    notify.close()


def test_check_rejects_cpus_this_machine_lacks(tmp_path: Path, origin: int) -> None:
    path = tmp_path / "rproxy.toml"
    path.write_text(config_text(origin, tmp_path, process="cpus = [4095]"))
    done = subprocess.run([sys.executable, "-m", "appliance", "-t", "-c", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and "CPU 4095 not usable" in done.stderr


def test_sigterm_completes_in_flight_requests(start: StartFn) -> None:
    proxy = start("[proxy]\ndrain_timeout = \"10s\"\n")
    address = proxy.address
    results: list[tuple[int, bytes, bytes] | BaseException] = []

    def slow() -> None:
        try:
            results.append(get(address, "/delay/1.5"))
        except OSError as exc:
            results.append(exc)

    threads = [threading.Thread(target=slow) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # all six are in flight at the origin now
    stopped_at = time.monotonic()
    proxy.send(signal.SIGTERM)
    for thread in threads:
        thread.join(10)
    assert proxy.proc.wait(10) == 0
    assert time.monotonic() - stopped_at < 5
    assert len(results) == 6
    for outcome in results:
        assert not isinstance(outcome, BaseException), outcome
        status, head, body = outcome
        assert status == 200 and body == b"slept\n"
        assert b"connection: close" in head.lower()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2)


def test_usr2_upgrade_in_place_under_load(start: StartFn) -> None:
    proxy = start()
    old_pids = {w["pid"] for w in proxy.current_workers()}
    with Load(proxy.address, fresh=3, keepalive=2) as load:
        load.wait_requests(50)
        proxy.send(signal.SIGUSR2)
        time.sleep(0.05)
        proxy.send(signal.SIGUSR2)  # a second one while the first is in progress: refused
        wait_for(lambda: "upgraded in place" in proxy.log(), 15, "the re-exec")
        status = proxy.wait_running(generation=2)
        load.wait_requests(100)
        result = load.stop()
    _no_failures(result)
    assert status["pid"] == proxy.pid and proxy.proc.poll() is None
    assert old_pids.isdisjoint(w["pid"] for w in proxy.current_workers())
    log = proxy.log()
    assert log.count("upgraded in place") == 1
    assert "upgrade refused" in log
    # The re-executed image still answers HUP through the helper, and drains its own workers.
    assert proxy.reload().returncode == 0
    wait_for(lambda: len(proxy.status()["workers"]) == 2, 10, "adopted workers drained")
    print(f"upgrade: {result.ok} requests, 0 failed, keep-alive retries {dict(result.retried_idle_closes)}")


def test_workers_are_pinned_one_per_cpu(start: StartFn) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    proxy = start(process=f"workers = 2\ncpus = \"{cpus[1]},{cpus[0]}\"")
    by_slot = {w["slot"]: w["pid"] for w in proxy.current_workers()}

    def allowed(pid: int) -> str:
        status = Path(f"/proc/{pid}/status").read_text()
        return next(line.split(":", 1)[1].strip() for line in status.splitlines()
                    if line.startswith("Cpus_allowed_list"))

    assert allowed(by_slot[0]) == str(cpus[1])
    assert allowed(by_slot[1]) == str(cpus[0])
    assert allowed(proxy.pid) != str(cpus[0])  # the supervisor itself is not pinned
    # A respawned worker lands on its slot's CPU again.
    os.kill(by_slot[0], signal.SIGKILL)

    def respawned() -> dict[str, Any] | None:
        slot0 = [w for w in proxy.current_workers() if w["slot"] == 0 and w["pid"] != by_slot[0]]
        return slot0[0] if slot0 and slot0[0]["state"] == "accepting" else None

    assert allowed(wait_for(respawned, 2, "slot 0 respawned")["pid"]) == str(cpus[1])


def test_heartbeat_loss_gets_worker_replaced(start: StartFn) -> None:
    proxy = start()
    frozen = proxy.current_workers()[0]
    os.kill(frozen["pid"], signal.SIGSTOP)  # alive but silent, like a blocked loop
    t0 = time.monotonic()

    def replaced() -> bool:
        slot = [w for w in proxy.current_workers() if w["slot"] == frozen["slot"]]
        return bool(slot) and slot[0]["pid"] != frozen["pid"] and slot[0]["state"] == "accepting"

    wait_for(replaced, 10, "the silent worker replaced")
    assert time.monotonic() - t0 >= 2.0  # not before heartbeat_timeout
    assert "missed its heartbeat" in proxy.log()
    assert get(proxy.address)[2] == GREETING


def test_usr1_reopens_log_files(start: StartFn) -> None:
    proxy = start()
    pids = [proxy.pid] + [w["pid"] for w in proxy.current_workers()]
    rotated = proxy.log_path.with_suffix(".log.1")
    proxy.log_path.rename(rotated)
    proxy.send(signal.SIGUSR1)

    def reopened_by_all() -> bool:
        text = proxy.log()
        return all(f" {pid} rproxyd INFO log files reopened" in text for pid in pids)

    wait_for(reopened_by_all, 5, "every process reopening the log")
    assert get(proxy.address)[0] == 200
    assert "log files reopened" not in rotated.read_text()


def test_reload_adds_and_removes_listeners_and_resizes(start: StartFn, origin: int) -> None:
    proxy = start(process="workers = 2")
    _rewrite(proxy, origin, listeners=2, process="workers = 2")
    assert proxy.reload().returncode == 0
    host, port = proxy.status()["listeners"]["l1"].rsplit(":", 1)
    assert get((host, int(port)))[2] == GREETING
    # One worker now: it serves both slot sockets of each listener, so connections the
    # kernel queues on the second socket are still accepted (closing it would drop them).
    _rewrite(proxy, origin, listeners=2, process="workers = 1")
    assert proxy.reload().returncode == 0
    assert len(proxy.current_workers()) == 1
    with Load(proxy.address, fresh=3, keepalive=0, max_seconds=20) as load:
        load.wait_requests(200)
        result = load.stop()
    _no_failures(result)
    # Removing the listener closes its sockets once the old generation has drained.
    _rewrite(proxy, origin, listeners=1, process="workers = 2")
    assert proxy.reload().returncode == 0
    assert "l1" not in proxy.status()["listeners"]
    wait_for(lambda: len(proxy.status()["workers"]) == 2, 10, "old generation gone")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2)
    assert get(proxy.address)[2] == GREETING
