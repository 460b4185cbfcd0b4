"""The supervisor: the service's main PID. It owns sockets and shared memory, forks
one pinned worker per slot, and never serves traffic.

Shape of the main loop (gunicorn's Arbiter): signal handlers only queue the signal
and write a byte to a wakeup pipe; each loop turn dispatches the queued signals to
`handle_<name>`, then reaps dead workers, observes heartbeats (readiness, murder),
and manages slots (respawn, rollout progress, stop completion). Logging, forking
and exec happen only from the loop.

Phases (one table, one transition method):

    STARTING ─▶ RUNNING ⇄ RELOADING          (SIGHUP: a new generation rolls out)
                   │  └──▶ UPGRADING ─▶ exec  (SIGUSR2: the new code's check runs beside the
                   ▼                           loop, then the exec; the new image starts in
                STOPPING                       UPGRADING and rolls out a generation of new code)

    STOPPING is reachable from every phase: SIGTERM graceful, SIGINT/SIGQUIT fast.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import logging
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

from appliance import build, shm
from appliance.config import Config, ConfigError, load
from appliance.config.paths import runtime_dir
from appliance.observe import metrics
from appliance.observe.hub import ObserveHub
from appliance.process import bootreport, heartbeat, logs, plan, status
from appliance.process.child import run_worker
from appliance.process.heartbeat import HeartbeatBoard, HeartbeatCell
from appliance.process.slots import Generation, ProcState, Slot, SlotState, WorkerProc
from appliance.process.sockets import ListenerSet
from appliance.process.upgrade import UpgradeCheck
from appliance.statemachine import Transitions
from appliance.systemd import Notifier
from appliance.tls import ring, stapling
from appliance.tls.stapler import OcspStapler
from appliance.worker import EXIT_BOOT_FAILURE

log = logging.getLogger("rproxyd.supervisor")

UPGRADE_ENV = "RPROXYD_UPGRADE"
HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
           signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)
ABORT_GRACE = 2.0  # SIGABRT → SIGKILL: time for faulthandler to write its traceback
STOP_GRACE = 2.0  # beyond drain_timeout before a draining worker is killed
BOOTING_TICK = 0.01  # loop period while a worker boots: readiness is polled from shared memory
IDLE_TICK = 1.0


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    UPGRADING = "upgrading"
    STOPPING = "stopping"


_PHASE_MOVES = Transitions("supervisor", {
    Phase.STARTING: (Phase.RUNNING, Phase.STOPPING),
    Phase.RUNNING: (Phase.RELOADING, Phase.UPGRADING, Phase.STOPPING),
    Phase.RELOADING: (Phase.RUNNING, Phase.STOPPING),
    Phase.UPGRADING: (Phase.RUNNING, Phase.STOPPING),
})


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    """Runs in the foreground as the main PID until stopped; `run()` returns the exit status."""

    def __init__(self, config_path: Path, config: Config) -> None:
        # Only stores things: sockets, memory and signal handlers come in run().
        self.config_path = config_path
        self.config = config
        self.phase = Phase.STARTING
        self.exit_status = 0
        self.current: Generation | None = None
        self.pending: Generation | None = None  # the generation a reload or upgrade rolls out
        self.pending_covers = 0
        self.procs: dict[int, WorkerProc] = {}
        self.signals: list[int] = []
        self.reload = {"requested": 0, "covers": 0, "ok": True, "error": "", "generation": 0}
        self.reload_wanted = False
        self.upgrade_check: UpgradeCheck | None = None  # in UPGRADING, until the exec
        self.stop_deadline: float | None = None
        self.runtime_dir = runtime_dir(config.process)
        self.listeners = ListenerSet()
        self.shared = shm.SharedMemory()
        self.board: HeartbeatBoard | None = None
        self.tickets: ring.TicketRotation | None = None  # TLS session-ticket keys, rotated here
        self.stapler: OcspStapler | None = None  # OCSP responses for the workers to staple
        self.observe: ObserveHub | None = None  # metrics slots and the admin listener
        self.notifier = Notifier()
        self._wakeup_r = self._wakeup_w = -1
        self._dirty = True

    # ------------------------------------------------------------ startup
    def run(self, inherited: dict[str, Any] | None = None) -> int:
        """Start (or, after an in-place upgrade, resume from `inherited`) and serve until stopped."""
        self._init_signals()
        if inherited is None:
            try:
                self._start_fresh()
            except (OSError, ValueError) as exc:
                log.error("cannot start: %s", exc)
                self.listeners.close_all()
                return 1
        else:
            self._resume(inherited)
        try:
            self._loop()
        finally:
            self.listeners.close_all()
            if self.observe is not None:
                self.observe.close()
        log.info("supervisor %d exiting with status %d", os.getpid(), self.exit_status)
        return self.exit_status

    def _init_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in HANDLED:
            signal.signal(sig, self._on_signal)
        # After an upgrade these arrive blocked (see _upgrade); pending ones fire now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only queue: the loop acts. A signal already queued is not queued twice (the kernel
        # coalesces pending signals the same way), so the queue holds at most one of each.
        if signum not in self.signals:
            self.signals.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wakeup_w, b".")

    def regions(self) -> dict[str, int]:
        """Shared-memory regions by name and size, created before the first fork."""
        return {"heartbeat": heartbeat.REGION_SIZE, ring.REGION_NAME: ring.REGION_SIZE,
                metrics.REGION_NAME: metrics.REGION_SIZE, stapling.REGION_NAME: stapling.REGION_SIZE}

    def _start_fresh(self) -> None:
        for name, size in self.regions().items():
            self.shared.region(name, size)
        self.board = HeartbeatBoard(self.shared.regions["heartbeat"])
        self.tickets = ring.TicketRotation(self.shared.regions[ring.REGION_NAME])
        self.tickets.configure(self.config.tls)
        self._start_stapler()
        self.observe = ObserveHub(self.shared.regions[metrics.REGION_NAME], self.config, self.snapshot)
        cpus = plan.slot_cpus(self.config.process)
        self.listeners.prepare(self.config.listener, len(cpus))
        self.listeners.commit(self.config.listener)  # the first generation owns them from the start
        self.current = Generation(1, self.config, [Slot(i, cpu) for i, cpu in enumerate(cpus)])
        self.reload["generation"] = 1
        log.info("supervisor %d starting generation 1 with %d workers", os.getpid(), len(cpus))

    def _start_stapler(self) -> None:
        """OCSP responses in their region, which workers forked from now on inherit."""
        if stapling.REGION_NAME not in self.shared.regions:  # upgrading from an image without stapling
            self.shared.region(stapling.REGION_NAME, stapling.REGION_SIZE)
        region = self.shared.regions[stapling.REGION_NAME]
        stapling.use_region(region)
        self.stapler = OcspStapler(region)
        self.stapler.configure(self.config)

    # -------------------------------------------------------------- loop
    def _loop(self) -> None:
        while True:
            self._sleep()
            self._dispatch_signals()
            now = time.monotonic()
            self._reap(now)
            self._observe(now)
            if self.upgrade_check is not None:
                self._upgrade_checked(now)
            self._manage(now)
            if self.tickets is not None:
                self.tickets.tick(now)
            if self.stapler is not None:
                self.stapler.tick(now)
            self.notifier.watchdog(now)
            if self._dirty:
                self._publish()
            if self.phase is Phase.STOPPING and not self.procs:
                return

    def _dispatch_signals(self) -> None:
        while self.signals:
            name = signal.Signals(self.signals.pop(0)).name[3:].lower()  # SIGHUP → handle_hup
            getattr(self, f"handle_{name}")()

    def _sleep(self) -> None:
        timeout = IDLE_TICK
        if self.config.process.heartbeat_timeout / 4 < timeout:
            timeout = self.config.process.heartbeat_timeout / 4
        if self.notifier.watchdog_interval is not None:
            timeout = min(timeout, self.notifier.watchdog_interval)
        if self.phase is Phase.STOPPING or any(p.state is ProcState.BOOTING for p in self.procs.values()):
            timeout = BOOTING_TICK
        if self.upgrade_check is not None:  # its exit wakes us (SIGCHLD), its deadline may not
            timeout = min(timeout, max(0.0, self.upgrade_check.deadline - time.monotonic()))
        for gen in self._generations():
            for slot in gen.slots:
                if slot.state is SlotState.BACKOFF:
                    timeout = min(timeout, max(0.0, slot.respawn_at - time.monotonic()))
        if self.signals:
            timeout = 0.0
        readers, writers = self.observe.fds() if self.observe is not None else ([], [])
        try:
            ready, writable, _ = select.select([self._wakeup_r, *readers], writers, [], timeout)
        except InterruptedError:
            return
        if self.observe is not None:
            self.observe.serve(ready, writable)  # bounded: never blocks the loop
        if self._wakeup_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wakeup_r, 4096):
                    pass

    def _generations(self) -> list[Generation]:
        return [gen for gen in (self.current, self.pending) if gen is not None]

    # ----------------------------------------------------------- signals
    def handle_hup(self) -> None:
        self.reload["requested"] += 1
        self._dirty = True
        if self.phase is Phase.RUNNING:
            self._start_reload()
        elif self.phase is not Phase.STOPPING:
            log.info("reload queued until the %s phase ends", self.phase.value)
            self.reload_wanted = True

    def handle_term(self) -> None:
        self._stop(graceful=True)

    def handle_int(self) -> None:
        self._stop(graceful=False)

    def handle_quit(self) -> None:
        self._stop(graceful=False)

    def handle_usr1(self) -> None:
        logs.reopen()
        for proc in self.procs.values():
            self._kill(proc, signal.SIGUSR1)

    def handle_usr2(self) -> None:
        if self.phase is not Phase.RUNNING:
            log.warning("upgrade refused: the supervisor is %s", self.phase.value)
            self.notifier.status(f"{self._status_line()}; upgrade refused while {self.phase.value}")
            return
        self._start_upgrade()

    def handle_chld(self) -> None:
        pass  # every loop turn reaps

    # ------------------------------------------------------------- phases
    def _transition(self, new: Phase) -> None:
        self.phase = _PHASE_MOVES.check(self.phase, new)
        self._dirty = True

    def _serving_on(self) -> str:
        assert self.current is not None
        listeners = self.current.config.listener
        bound = self.listeners.addresses(listeners)
        return ", ".join(f"{'https' if lc.tls.enabled else 'http'}://{bound[lc.name]}/" for lc in listeners)

    def _status_line(self) -> str:
        gen = self.current
        if gen is None:
            return "starting"
        return f"generation {gen.number}: {gen.serving_count()}/{len(gen.slots)} workers serving"

    # ------------------------------------------------------------ workers
    def _spawn(self, gen: Generation, slot: Slot, now: float) -> None:
        assert self.board is not None
        config = gen.config
        cell = self.board.allocate()
        beat = HeartbeatCell(self.shared.regions["heartbeat"], cell, config.process.heartbeat_timeout / 2)
        sockets = self.listeners.for_slot(config.listener, slot.index, len(gen.slots),
                                          staged=gen is self.pending)
        close_fds = self.listeners.all_fds() | {self._wakeup_r, self._wakeup_w}
        close_fds |= {region.fd for region in self.shared.regions.values()}
        close_fds |= self.observe.all_fds() if self.observe is not None else set()
        close_fds |= {p.boot_report for p in self.procs.values() if p.boot_report >= 0}
        report, report_w = bootreport.open_pipe()
        counting = self.observe.worker_slot(config, cell) if self.observe is not None else None
        for handler in logging.getLogger().handlers:
            handler.flush()
        # Blocked across fork so that no signal runs our handler in the child (see child.py).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                run_worker(config, sockets, slot.index, slot.cpu, beat, os.getppid(), close_fds | {report},
                           self.shared.regions[ring.REGION_NAME], counting, report_w)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(report_w)
        proc = WorkerProc(pid, slot.index, gen.number, cell, now, boot_report=report)
        self.procs[pid] = proc
        slot.started(proc)
        self._dirty = True
        log.info("generation %d slot %d: worker %d started on CPU %s", gen.number, slot.index, pid, slot.cpu)

    def _kill(self, proc: WorkerProc, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    def _drain(self, proc: WorkerProc, now: float, graceful: bool = True, keep_tunnels: bool = True) -> None:
        """Tell a worker to stop: SIGTERM drains in-flight work, SIGQUIT stops at once.

        A reload or upgrade keeps the worker's open tunnels for tunnel_drain_timeout (their
        clients have nowhere else to be yet); a stop (keep_tunnels false) closes them with
        SIGQUIT at drain_timeout, so systemd's TimeoutStopSec stays above drain_timeout alone.
        """
        if proc.state is not ProcState.DRAINING:
            proc.transition(ProcState.DRAINING)
        proxy = self._owner_config(proc).proxy
        longest = proxy.drain_timeout
        if keep_tunnels:
            longest = max(longest, proxy.tunnel_drain_timeout)
        elif graceful:
            quit_at = now + proxy.drain_timeout
            proc.quit_at = min(proc.quit_at or quit_at, quit_at)
        kill_at = now + STOP_GRACE + (longest if graceful else 0.0)
        proc.kill_at = min(proc.kill_at or kill_at, kill_at)
        self._kill(proc, signal.SIGTERM if graceful else signal.SIGQUIT)

    def _owner_config(self, proc: WorkerProc) -> Config:
        for gen in self._generations():
            if gen.number == proc.generation:
                return gen.config
        return self.config

    def _owner(self, proc: WorkerProc) -> tuple[Generation, Slot] | None:
        for gen in self._generations():
            slot = gen.slots[proc.slot] if proc.slot < len(gen.slots) else None
            if (gen.number == proc.generation and slot is not None and slot.worker is proc
                    and slot.state is not SlotState.RETIRED):
                return gen, slot
        return None

    def _reap(self, now: float) -> None:
        for proc in list(self.procs.values()):
            try:
                pid, wait_status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pid, wait_status = proc.pid, 0
            if pid:
                self._exited(proc, wait_status, now)

    def _exited(self, proc: WorkerProc, wait_status: int, now: float) -> None:
        assert self.board is not None
        was = proc.state
        proc.transition(ProcState.EXITED)
        proc.exit_status = wait_status
        del self.procs[proc.pid]
        self.board.release(proc.cell)
        if self.observe is not None:
            self.observe.worker_exited(proc.cell, restarted=was is not ProcState.DRAINING)
        self._dirty = True
        how = _describe_exit(wait_status)
        boot_failed = os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == EXIT_BOOT_FAILURE
        reason = bootreport.collect(proc.boot_report)
        proc.boot_report = -1
        if boot_failed and reason:
            how = f"{how}: {reason}"
        owner = self._owner(proc)
        if owner is None:  # a retired worker finishing its drain
            log.info("worker %d (generation %d slot %d) exited: %s", proc.pid, proc.generation,
                     proc.slot, how)
            return
        gen, slot = owner
        if gen is self.pending:
            self._abort_rollout(f"a new worker (slot {slot.index}) died while starting: {how}", now)
            return
        if self.phase is Phase.STARTING and boot_failed:
            log.error("worker %d failed to boot (%s); stopping (fix the build or configuration)",
                      proc.pid, how)
            # The journal's one line on why the start failed (the log file may be elsewhere).
            print(f"rproxyd: a worker failed to boot: {how}", file=sys.stderr)
            self.exit_status = EXIT_BOOT_FAILURE
            self._stop(graceful=False)
            return
        process = gen.config.process
        delay = slot.died(now, process.respawn_backoff, process.respawn_backoff_max)
        if boot_failed:
            # Respawning a worker that cannot boot at full speed only fills the log.
            slot.respawn_at = now + max(delay, process.respawn_backoff_max)
        level = logging.INFO if was is ProcState.DRAINING else logging.WARNING
        log.log(level, "worker %d (slot %d) died (%s) while %s; respawning in %.1fs",
                proc.pid, slot.index, how, was.value, slot.respawn_at - now)

    def _observe(self, now: float) -> None:
        """Readiness and liveness from the heartbeat cells; murder what stopped beating."""
        assert self.board is not None
        for proc in list(self.procs.values()):
            stamp, phase = self.board.read(proc.cell)
            owner = self._owner(proc)
            config = self._owner_config(proc)
            if proc.state is ProcState.BOOTING and phase == heartbeat.ACCEPTING:
                proc.transition(ProcState.ACCEPTING)
                proc.accepting_since = now
                if owner is not None:
                    owner[1].transition(SlotState.SERVING)
                self._dirty = True
                continue
            if proc.abort_sent:
                if now - proc.abort_sent > ABORT_GRACE:
                    self._kill(proc, signal.SIGKILL)
                continue
            if proc.state is ProcState.BOOTING:
                if now - proc.started > config.process.boot_timeout:
                    log.error("worker %d not accepting after %.1fs; killing it", proc.pid,
                              config.process.boot_timeout)
                    proc.abort_sent = now
                    self._kill(proc, signal.SIGABRT)
            elif now - stamp > config.process.heartbeat_timeout:
                log.error("worker %d missed its heartbeat for %.1fs; killing it", proc.pid, now - stamp)
                proc.abort_sent = now
                self._kill(proc, signal.SIGABRT)
            elif proc.state is ProcState.DRAINING and proc.quit_at and now > proc.quit_at:
                proc.quit_at = 0.0
                self._kill(proc, signal.SIGQUIT)  # a stop's drain is over: close the kept tunnels
            elif proc.state is ProcState.DRAINING and now > proc.kill_at:
                log.warning("worker %d still running after its drain deadline; killing it", proc.pid)
                proc.abort_sent = now - ABORT_GRACE  # no traceback wanted: straight to SIGKILL
                self._kill(proc, signal.SIGKILL)

    def _manage(self, now: float) -> None:
        if self.phase is Phase.STOPPING:
            return
        for gen in self._generations():
            for slot in gen.slots:
                if slot.state is SlotState.BACKOFF and now >= slot.respawn_at:
                    self._spawn(gen, slot, now)
        if self.phase is Phase.STARTING and self.current and self.current.all_serving():
            self._transition(Phase.RUNNING)
            # The line `make run` and an operator wait for: bound and serving, not before.
            log.info("serving on %s; %s", self._serving_on(), self._status_line())
            self.notifier.ready(self._status_line())
        elif self.pending is not None and self.pending.all_serving():
            self._commit(now)
        if self.phase is Phase.RUNNING and self.reload_wanted:
            self.reload_wanted = False
            self._start_reload()

    # ----------------------------------------------------------- reloads
    def _start_reload(self, upgrade: bool = False) -> None:
        """Validate the configuration and start rolling out a new generation.

        Nothing running is touched until every worker of the new generation accepts
        on the inherited sockets; only then are the old workers told to drain.
        """
        self.pending_covers = self.reload["requested"]
        what = "upgrade" if upgrade else "reload"
        self.notifier.reloading(f"{self._status_line()}; {what} in progress")
        try:
            config = load(self.config_path)
            cpus = plan.slot_cpus(config.process)
            self.listeners.prepare(config.listener, len(cpus))
        except ConfigError as exc:
            self._reload_failed("; ".join(exc.problems))
            return
        except (ValueError, OSError) as exc:
            self._reload_failed(str(exc))
            return
        assert self.current is not None
        number = self.current.number + 1
        self.pending = Generation(number, config, [Slot(i, cpu) for i, cpu in enumerate(cpus)])
        if not upgrade:
            self._transition(Phase.RELOADING)
        log.info("%s: rolling out generation %d with %d workers", what, number, len(cpus))

    def _reload_failed(self, error: str) -> None:
        log.error("reload failed, generation %s keeps serving: %s",
                  self.current.number if self.current else "-", error)
        self.reload.update(covers=self.pending_covers, ok=False, error=error)
        if self.observe is not None:
            self.observe.reload_done(ok=False)
        if self.phase in (Phase.RELOADING, Phase.UPGRADING):
            self._transition(Phase.RUNNING)
        self._dirty = True
        # READY=1 after a failed attempt too, or systemd leaves the unit "reloading".
        self.notifier.ready(f"{self._status_line()}; reload failed: {error}")

    def _commit(self, now: float) -> None:
        assert self.pending is not None and self.current is not None
        old, new = self.current, self.pending
        self.current, self.pending = new, None
        for slot in old.slots:
            if slot.worker is not None and slot.worker.alive:
                self._drain(slot.worker, now)
            slot.transition(SlotState.RETIRED)
        self.listeners.commit(new.config.listener)
        if new.config.log != self.config.log:
            try:
                logs.setup(new.config.log)
            except OSError as exc:  # checked at load; it may have changed since
                log.error("log destination unchanged: cannot open %s: %s", new.config.log.file,
                          exc.strerror)
        if self.tickets is not None:
            try:
                self.tickets.configure(new.config.tls)  # key files re-read: rotation by replace + HUP
            except ValueError as exc:
                log.error("ticket keys unchanged: %s", exc)
        if self.stapler is not None:
            self.stapler.configure(new.config)  # response files re-read, new certificates fetched
        self.config = new.config
        self.reload.update(covers=self.pending_covers, ok=True, error="", generation=new.number)
        if self.observe is not None:
            self.observe.reload_done(ok=True, config=new.config)
        self._transition(Phase.RUNNING)
        log.info("generation %d serving; generation %d draining", new.number, old.number)
        self.notifier.ready(self._status_line())

    def _abort_rollout(self, error: str, now: float) -> None:
        assert self.pending is not None
        for slot in self.pending.slots:
            # Graceful: a new worker that already accepts may be serving real requests.
            if slot.worker is not None and slot.worker.alive:
                self._drain(slot.worker, now)
            slot.transition(SlotState.RETIRED)
        self.pending = None
        # Every socket the rollout opened, grown slot sockets of existing listeners too:
        # no worker of the generation that keeps serving accepts on them.
        self.listeners.rollback()
        self._reload_failed(error)

    # -------------------------------------------------------------- stop
    def _stop(self, graceful: bool) -> None:
        now = time.monotonic()
        if self.upgrade_check is not None:
            self.upgrade_check.cancel()
            self.upgrade_check = None
            log.info("upgrade cancelled by the stop")
        if self.phase is not Phase.STOPPING:
            self._transition(Phase.STOPPING)
            self.notifier.stopping(f"{self._status_line()}; stopping")
            log.info("%s stop: draining %d workers", "graceful" if graceful else "fast", len(self.procs))
        for gen in self._generations():
            for slot in gen.slots:
                if slot.state is not SlotState.RETIRED:
                    slot.transition(SlotState.RETIRED)
        for proc in self.procs.values():
            # Workers already draining after a reload too: a stop does not keep tunnels.
            self._drain(proc, now, graceful, keep_tunnels=False)

    # ------------------------------------------------------------ status
    def snapshot(self) -> dict[str, Any]:
        """Phase, generation and workers, for the admin endpoints (appliance/observe/hub.py)."""
        cpus = {(gen.number, s.index): s.cpu for gen in self._generations() for s in gen.slots}
        return {
            "pid": os.getpid(),
            "build": build.describe(),
            "phase": self.phase.value,
            "generation": self.current.number if self.current else 0,
            "reload": dict(self.reload),
            "workers": [
                {"pid": p.pid, "slot": p.slot, "cpu": cpus.get((p.generation, p.slot)),
                 "generation": p.generation, "state": p.state.value, "started": p.started,
                 "cell": p.cell}
                for p in sorted(self.procs.values(), key=lambda p: (p.generation, p.slot))
            ],
        }

    def _publish(self) -> None:
        self._dirty = False
        gen = self.current
        state = {
            "pid": os.getpid(),
            "config": str(self.config_path.absolute()),  # what a reload reads, for --reload to say
            "phase": self.phase.value,
            "generation": gen.number if gen else 0,
            "reload": self.reload,
            "listeners": self.listeners.addresses(gen.config.listener) if gen else {},
            "workers": [
                {"pid": p.pid, "slot": p.slot, "generation": p.generation, "state": p.state.value}
                for p in sorted(self.procs.values(), key=lambda p: (p.generation, p.slot))
            ],
        }
        if self.observe is not None:
            state["admin"] = self.observe.published(state["generation"], len(self.procs))
        try:
            status.write_status(self.runtime_dir, state)
        except OSError as exc:
            log.error("cannot write %s: %s", self.runtime_dir / status.STATUS_FILE, exc)
        if self.phase is not Phase.STOPPING:
            self.notifier.status(self._status_line())

    # ----------------------------------------------------------- upgrade
    def _start_upgrade(self) -> None:
        """Check the code now on disk; the loop goes on meanwhile and `_upgrade_checked` follows."""
        argv = [sys.executable, "-m", "appliance", "-t", "-c", str(self.config_path)]
        try:
            self.upgrade_check = UpgradeCheck(argv, time.monotonic())
        except OSError as exc:
            self._refuse_upgrade(f"cannot run its check: {exc}")
            return
        self._transition(Phase.UPGRADING)
        log.info("upgrade: checking the new version")

    def _upgrade_checked(self, now: float) -> None:
        assert self.upgrade_check is not None
        result = self.upgrade_check.poll(now)
        if result is None:
            return
        self.upgrade_check = None
        if not result.ok:
            self._transition(Phase.RUNNING)
            self._refuse_upgrade(f"the new version fails its check: {result.output}")
            return
        self._exec_upgrade()

    def _refuse_upgrade(self, error: str) -> None:
        log.error("upgrade refused: %s", error)
        self.notifier.status(f"{self._status_line()}; upgrade refused: {error}")

    def _exec_upgrade(self) -> None:
        """Re-exec this PID with the code now on disk; sockets, memory and workers carry over."""
        # Signals already taken off the kernel's queue would die with this image: act on
        # them now. In UPGRADING a SIGHUP is carried over as reload_wanted, a second
        # SIGUSR2 is refused, and a stop signal cancels the upgrade.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        self._dispatch_signals()
        if self.phase is Phase.STOPPING:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
            return
        self.notifier.reloading(f"{self._status_line()}; upgrading in place")
        assert self.current is not None and self.board is not None
        state = {
            "version": 1,
            "runtime_dir": str(self.runtime_dir),
            "reload": self.reload,
            "reload_wanted": self.reload_wanted,
            "generation": self.current.number,
            "slots": [[slot.index, slot.cpu, slot.crashes] for slot in self.current.slots],
            "workers": [
                [p.pid, p.slot, p.generation, p.cell, p.state.value, p.started, p.accepting_since,
                 p.kill_at]
                for p in self.procs.values()
            ],
            "listeners": self.listeners.export(),
            "shm": self.shared.export(),
        }
        log.info("upgrading in place: exec %s", " ".join(sys.orig_argv))
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.environ[UPGRADE_ENV] = json.dumps(state)
        # Still blocked, so arriving signals stay pending rather than lost: the mask
        # survives exec and the new image unblocks once its handlers are in place (a
        # SIGHUP with the default action would kill us).
        try:
            os.execv(sys.executable, sys.orig_argv)
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
            del os.environ[UPGRADE_ENV]
            for fd in self.listeners.all_fds() | {r.fd for r in self.shared.regions.values()}:
                os.set_inheritable(fd, False)
            log.error("upgrade failed: exec: %s", os.strerror(exc.errno or errno.EIO))
            self._transition(Phase.RUNNING)
            self.notifier.ready(f"{self._status_line()}; upgrade failed: exec")

    def _resume(self, state: dict[str, Any]) -> None:
        """Take over from the previous image: adopt everything, then replace its workers."""
        self.shared = shm.SharedMemory.adopt(state["shm"])
        self.board = HeartbeatBoard(self.shared.regions["heartbeat"])
        if ring.REGION_NAME not in self.shared.regions:  # upgrading from an image without TLS
            self.shared.region(ring.REGION_NAME, ring.REGION_SIZE)
        self.tickets = ring.TicketRotation(self.shared.regions[ring.REGION_NAME])
        self.tickets.configure(self.config.tls, adopted=True)
        self._start_stapler()
        if metrics.REGION_NAME not in self.shared.regions:  # upgrading from an image without metrics
            self.shared.region(metrics.REGION_NAME, metrics.REGION_SIZE)
        self.observe = ObserveHub(self.shared.regions[metrics.REGION_NAME], self.config, self.snapshot)
        self.listeners = ListenerSet.adopt(state["listeners"])
        self.runtime_dir = Path(state["runtime_dir"])
        self.reload = state["reload"]
        self.reload_wanted = state["reload_wanted"]
        slots = [Slot(index, cpu, crashes=crashes) for index, cpu, crashes in state["slots"]]
        self.current = Generation(state["generation"], self.config, slots)
        for pid, slot, gen, cell, state_name, started, since, kill_at in state["workers"]:
            proc = WorkerProc(pid, slot, gen, cell, started, ProcState(state_name), since, kill_at)
            self.board.claim(cell)
            self.procs[pid] = proc
            if gen == self.current.number and proc.state is not ProcState.DRAINING:
                slots[slot].started(proc)
                if proc.state is ProcState.ACCEPTING:
                    slots[slot].transition(SlotState.SERVING)
        self.phase = Phase.UPGRADING  # the state we exec'd in, carried over (not a transition)
        log.info("supervisor %d upgraded in place; adopted %d workers", os.getpid(), len(self.procs))
        self._start_reload(upgrade=True)
        if self.pending is None:
            # The configuration loaded (cli.main exits before we get here if it does not),
            # but the rollout could not start: a new listener's address is taken, or the
            # files changed again since. The adopted workers keep serving the old code.
            log.error("upgrade: keeping the adopted generation %d", self.current.number)


def run(config_path: Path, config: Config) -> int:
    """`rproxyd -c FILE`: start a supervisor, or resume one across an in-place upgrade."""
    inherited = os.environ.pop(UPGRADE_ENV, None)
    try:
        logs.setup(config.log)
    except OSError as exc:  # checked at load; it may have changed since
        print(f"rproxyd: cannot open the log file {config.log.file}: {exc.strerror}", file=sys.stderr)
        return 1
    supervisor = Supervisor(config_path, config)
    return supervisor.run(json.loads(inherited) if inherited else None)
