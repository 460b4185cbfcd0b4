"""The in-place upgrade's pre-flight check, run beside the supervisor's loop.

Before it re-execs, the supervisor runs `python -m appliance -t` with the code now
on disk. That costs a Python start-up and a configuration load: half a second
usually, up to CHECK_TIMEOUT on a loaded machine. The loop must not stop for it
(reaping and respawning, heartbeat checks, watchdog pings, the admin listener), so
the check is a child process that the loop polls each turn instead of waiting on.
SIGCHLD wakes the loop when it exits; the supervisor reaps only its workers' PIDs,
so `subprocess` gets to reap this one.
"""

from __future__ import annotations

import subprocess
import tempfile
from typing import NamedTuple

CHECK_TIMEOUT = 10.0


class CheckResult(NamedTuple):
    ok: bool
    output: str  # what the check printed, on one line


class UpgradeCheck:
    """One run of a check command; `poll()` it until it returns a result."""

    def __init__(self, argv: list[str], now: float, timeout: float = CHECK_TIMEOUT) -> None:
        # A file rather than a pipe: nothing reads while the check runs, and a full pipe
        # would stall it until the deadline.
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in poll() or cancel()
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._output,
                                          stderr=subprocess.STDOUT)
        except BaseException:
            self._output.close()
            raise
        self.timeout = timeout
        self.deadline = now + timeout

    def poll(self, now: float) -> CheckResult | None:
        """None while the check runs; its result once it exited or overran its deadline."""
        status = self._proc.poll()
        if status is None and now < self.deadline:
            return None
        if status is None:
            self.cancel()
            return CheckResult(False, f"the check took longer than {self.timeout:g}s")
        self._output.seek(0)
        output = self._output.read().decode(errors="replace").strip().replace("\n", "; ")
        self._output.close()
        return CheckResult(status == 0, output or f"exit status {status}")

    def cancel(self) -> None:
        """Kill the check (a stop signal arrived, or it overran) and reap it."""
        self._proc.kill()
        self._proc.wait()
        self._output.close()
