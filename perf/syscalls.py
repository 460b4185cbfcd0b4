"""System calls per request: `perf stat` on the syscall tracepoints of a proxy's processes.

`perf/run --syscalls` counts, during every measured run, each system call the proxy's
processes enter (`syscalls:sys_enter_*`, counted in the kernel: no sampling, no ptrace
stop, so unlike `strace -c` it does not slow the proxy and change how many events each
epoll_wait returns), and reports them per request (per MiB in the byte scenarios), medians
of the runs. The calls a proxy makes per request on the same load are its share of the
kernel time; comparing them call by call with nginx's and HAProxy's shows which are avoidable.
"""

from __future__ import annotations

from pathlib import Path

from .tools import PerfAttached

EVENTS = "syscalls:sys_enter_*"
_PREFIX = "syscalls:sys_enter_"


class SyscallCount(PerfAttached):
    """`perf stat` of the syscall entries of some processes for the duration of a `with` block."""

    def __init__(self, perf: str, pids: list[int], out: Path) -> None:
        # Half a second to open a counter per tracepoint and thread before the load starts.
        super().__init__([perf, "stat", "-x", ",", "--no-big-num", "-e", EVENTS, "-o", str(out)], pids, 0.5)
        self.out = out

    def counts(self) -> dict[str, int]:
        """Entries of each system call (only those entered at least once)."""
        counts: dict[str, int] = {}
        for line in self.out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) < 3 or not fields[2].startswith(_PREFIX) or not fields[0].isdigit():
                continue
            n = int(fields[0])
            if n:
                name = fields[2][len(_PREFIX):]
                counts[name] = counts.get(name, 0) + n
        return counts
