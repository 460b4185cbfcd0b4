"""The supervisor with real processes on loopback: rproxyd, a demo origin, raw-socket clients."""

from __future__ import annotations

import os
import re
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
    # Removing the listener: the supervisor closes its sockets at commit and the old workers
    # close their copies as they start draining; once both have, nothing listens there.
    _rewrite(proxy, origin, listeners=1, process="workers = 2")
    assert proxy.reload().returncode == 0
    assert "l1" not in proxy.status()["listeners"]
    wait_for(lambda: len(proxy.status()["workers"]) == 2, 10, "old generation gone")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2)
    assert get(proxy.address)[2] == GREETING


def test_failed_reload_that_grows_workers_leaves_no_unserved_queue(start: StartFn, origin: int,
                                                                    tmp_path: Path) -> None:
    proxy = start(process="workers = 1")
    before = proxy.current_workers()
    # Valid for `-t`, but every new worker fails at boot, so the rollout of four slots, hence
    # three more sockets per listener, is aborted: its access log is a unix socket, which
    # access(2) lets its owner write (`-t` checks permissions) and open(2) refuses (ENXIO).
    with socket.socket(socket.AF_UNIX) as holder:
        holder.bind(str(tmp_path / "access.sock"))
    broken = f'[access_log]\nenabled = true\nfile = "{tmp_path}/access.sock"\n'
    _rewrite(proxy, origin, extra=broken, process="workers = 4")
    done = proxy.reload()
    assert done.returncode == 1 and "died while starting" in done.stderr, done.stderr
    assert proxy.current_workers() == before
    # Fresh connections land on every socket of the reuseport group: one the old worker does
    # not accept on would leave three in four of them unanswered.
    with Load(proxy.address, fresh=8, keepalive=0, max_seconds=20) as load:
        load.wait_requests(200)
        result = load.stop()
    _no_failures(result)
    assert "died while starting" in proxy.log()


def _slow_requests(address: tuple[str, int], path: str, count: int) -> list[socket.socket]:
    """`count` connections, each with one HTTP/1.1 request (keep-alive: no Connection header)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        socks.append(sock)
    return socks


def _cut_without_response(sock: socket.socket) -> bool:
    """True if the server closes (or resets) the connection without sending a response."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return not data


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["hup", "term"])
def test_keepalive_request_in_flight_when_draining_starts_gets_connection_close(
        start: StartFn, sig: int) -> None:
    proxy = start("[proxy]\ndrain_timeout = \"10s\"\n")
    [sock] = _slow_requests(proxy.address, "/delay/1.5", 1)
    with sock:
        time.sleep(0.5)  # at the origin now; the drain starts well before the answer
        proxy.send(sig)
        head, body, close = Load.read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b"slept\n"
        assert close, head  # the client asked for keep-alive; the draining worker says close
        assert sock.recv(1) == b""  # and then closes
    if sig == signal.SIGTERM:
        assert proxy.proc.wait(10) == 0
    else:
        proxy.wait_running(generation=2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["int", "quit"])
def test_fast_stop_does_not_wait_for_in_flight_requests(start: StartFn, sig: int) -> None:
    proxy = start("[proxy]\ndrain_timeout = \"30s\"\n")
    socks = _slow_requests(proxy.address, "/delay/5", 4)
    time.sleep(0.3)  # all four at the origin
    stopped_at = time.monotonic()
    proxy.send(sig)
    assert proxy.proc.wait(5) == 0
    # Neither the drain (30 s) nor the supervisor's kill (STOP_GRACE, 2 s) was waited for.
    assert time.monotonic() - stopped_at < 1.5
    for sock in socks:
        with sock:
            assert _cut_without_response(sock)
    assert "still running after its drain deadline" not in proxy.log()


def test_drain_timeout_cuts_a_straggler_and_the_old_worker_exits_by_it(start: StartFn) -> None:
    proxy = start("[proxy]\ndrain_timeout = \"1s\"\n", process="workers = 1")
    [old] = proxy.current_workers()
    [sock] = _slow_requests(proxy.address, "/delay/5", 1)
    with sock:
        time.sleep(0.3)
        assert proxy.reload().returncode == 0
        draining_since = time.monotonic()  # the commit, give or take the helper's polling
        assert _cut_without_response(sock)
        cut_after = time.monotonic() - draining_since

    def old_gone() -> bool:
        return all(w["pid"] != old["pid"] for w in proxy.status()["workers"])

    # By itself at drain_timeout, not by the supervisor's SIGKILL two seconds later.
    wait_for(old_gone, 1.8, "the old worker gone by its drain deadline")
    assert 0.7 < cut_after < 1.8, cut_after
    log = proxy.log()
    assert "drain timeout: cutting 1 connections" in log
    assert f"worker {old['pid']} (generation 1 slot 0) exited: exit status 0" in log


def test_crash_looping_worker_is_respawned_with_growing_backoff(start: StartFn) -> None:
    proxy = start(process="workers = 1\nrespawn_backoff = \"0.2s\"\nrespawn_backoff_max = \"10s\"")
    waits = []
    for _ in range(4):
        [victim] = proxy.current_workers()
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced(pid: int = victim["pid"]) -> bool:
            workers = proxy.current_workers()
            return bool(workers) and workers[0]["pid"] != pid and workers[0]["state"] == "accepting"

        wait_for(replaced, 5, "the slot's next worker accepting")
        waits.append(time.monotonic() - killed_at)
    delays = re.findall(r"\(slot 0\) died \(killed by SIGKILL\) while accepting; respawning in ([\d.]+)s",
                        proxy.log())
    assert delays == ["0.0", "0.2", "0.4", "0.8"], delays
    # Each wait covers its back-off (plus the boot of the next worker).
    for waited, delay in zip(waits, (0.0, 0.2, 0.4, 0.8), strict=True):
        assert delay <= waited < delay + 2.0, waits
    assert get(proxy.address)[2] == GREETING


def test_upgrade_check_runs_beside_the_loop_and_a_failure_refuses_the_upgrade(start: StartFn) -> None:
    proxy = start()
    before = proxy.current_workers()
    proxy.config_path.write_text(proxy.config_path.read_text() + "\n[limits]\nmax_header_bytes = \"x\"\n")
    proxy.send(signal.SIGUSR2)
    # The loop publishes its phase while the check runs: it is not blocked waiting for it.
    wait_for(lambda: proxy.status().get("phase") == "upgrading", 5, "the upgrading phase")
    wait_for(lambda: "upgrade refused: the new version fails its check" in proxy.log(), 15, "the refusal")
    assert "limits.max_header_bytes" in proxy.log()
    status = proxy.wait_running(generation=1)
    assert status["pid"] == proxy.pid and proxy.current_workers() == before
    assert get(proxy.address)[2] == GREETING


def _reload_cmd(*args: str, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    # RUNTIME_DIRECTORY points at an empty directory: the machine's own /run/rproxyd is none
    # of the test's business.
    return subprocess.run([sys.executable, "-m", "appliance", "--reload", *args], capture_output=True,
                          text=True, timeout=30, check=False,
                          env={**os.environ, "RUNTIME_DIRECTORY": str(runtime_dir)})


def test_reload_tells_a_missing_supervisor_from_a_failed_reload(start: StartFn, tmp_path: Path) -> None:
    proxy = start()
    host, port = proxy.address
    assert f"serving on http://{host}:{port}/; generation 1: " in proxy.log()
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    config = str(proxy.config_path)
    # Without -c the status file is looked for where the default says, and the hint names -c.
    lost = _reload_cmd(str(proxy.pid), runtime_dir=elsewhere)
    assert lost.returncode == 2, lost
    assert lost.stderr.startswith(f"rproxyd: cannot find the supervisor: process {proxy.pid} is not an "
                                  "rproxyd supervisor, or it publishes its status elsewhere.")
    assert f"{elsewhere}/status.json (the default: $RUNTIME_DIRECTORY, else /run/rproxyd): no such file" \
        in lost.stderr
    assert "[process] runtime_dir of the configuration the supervisor was started with: pass that " \
        "file with -c" in lost.stderr
    # A live process that is no supervisor: both places are named, with what they hold.
    other = _reload_cmd(str(os.getpid()), "-c", config, runtime_dir=elsewhere)
    assert other.returncode == 2
    assert (f"{proxy.run_dir}/status.json ([process] runtime_dir of {config}): it is rproxyd "
            f"{proxy.pid}'s") in other.stderr
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = _reload_cmd(str(gone.pid), "-c", config, runtime_dir=elsewhere)
    assert dead.returncode == 2
    assert dead.stderr == f"rproxyd: cannot find the supervisor: no process {gone.pid}\n"
    # The reload itself: it says which file the supervisor read, and why it was refused.
    good = proxy.config_path.read_text()
    proxy.config_path.write_text(good + '\n[limits]\nkeepalive_timeout = true\n')
    refused = proxy.reload()
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"rproxyd: reload failed: rproxyd {proxy.pid} refused {config} (the "
                                     f"file rproxyd {proxy.pid} was started with), generation 1 keeps "
                                     f"serving: {config}: limits.keepalive_timeout: expected a duration")
    proxy.config_path.write_text(good)
    done = proxy.reload()
    assert (done.returncode, done.stdout) == (0, f"rproxyd: reloaded {config} (the file rproxyd "
                                                 f"{proxy.pid} was started with): generation 2 serves\n")


def test_make_run_prints_no_success_when_the_port_is_taken(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "rproxy.toml"
        config.write_text(config_text(1, tmp_path).replace("127.0.0.1:0", f"127.0.0.1:{port}")
                          .replace(f'file = "{tmp_path}/rproxyd.log"', ""))
        result = subprocess.run(["make", "-s", "run", f"CONFIG={config}", "ORIGIN_PORT=0"], cwd=repo,
                                capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"listener l0: cannot bind 127.0.0.1:{port}: Address already in use" in output
    assert "serving on" not in output and "rproxyd on http" not in output, output
