"""Where a proxy's CPU goes: `perf record` samples of its processes, split by shared object.

`perf/run --breakdown` records every measured run of every proxy and reports the CPU per
request (per MiB in the byte scenarios) in four parts:

- OpenSSL: libcrypto and libssl, the handshake and record cryptography;
- kernel: system calls, TCP on loopback, the scheduler;
- libc: malloc, memcpy, the locks OpenSSL takes;
- own code: everything else, the proxy itself. For nginx and HAProxy their binary; for
  rproxyd and the TLS floor the Python interpreter, uvloop/libuv, httptools, the `_ssl`
  glue and rproxyd's C ticket callback.

Of the kernel part, the share spent waking the peer that waits on a socket (the loopback
delivery inside a write wakes the reader, here wrk or the origin on the other CPU) is
reported on its own: when that CPU sleeps, each wake-up is an inter-processor interrupt,
which under a hypervisor costs a VM exit. It grows as the peers idle, so a slower proxy pays
more of it per request than a faster one for the same system calls.

Where two proxies spend the same on OpenSSL and the kernel, the difference in the last
part is what their runtimes cost. Sampling costs CPU too (250 samples a second per CPU), so a
--breakdown run's headline ratios are a little lower than a plain run's.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .tools import PerfAttached

PARTS = ("OpenSSL", "kernel", "libc", "own code")
SAMPLE_HZ = 250
_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")
# Kernel functions that wake the tasks waiting on a socket (the peer's epoll_wait or read):
# a sample with one of them in its kernel call chain is time spent waking a peer.
WAKING = "sock_def_readable|sock_def_wakeup|sock_def_write_space|__wake_up.*|try_to_wake_up|ep_poll_callback"


def part_of(dso: str) -> str:
    """Which of PARTS a shared object's samples count towards."""
    if dso.startswith(("libcrypto.so", "libssl.so")):
        return "OpenSSL"
    if dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith(("libc.so", "ld-linux", "libm.so", "[vdso]")):
        return "libc"
    return "own code"


class PerfRecord(PerfAttached):
    """`perf record` of some processes for the duration of a `with` block."""

    def __init__(self, perf: str, pids: list[int], out: Path) -> None:
        # -g: kernel call chains (frame pointers) for the share spent waking peers.
        super().__init__([perf, "record", "-q", "-g", "-F", str(SAMPLE_HZ), "-o", str(out)], pids, 0.2)
        self.out = out

    def shares(self, perf: str) -> dict[str, float]:
        """Fraction of the samples in each shared object."""
        report = subprocess.run([perf, "report", "-i", str(self.out), "--no-children", "--sort", "dso",
                                 "--stdio", "-q", "-g", "none"], capture_output=True, text=True, check=True)
        shares: dict[str, float] = {}
        for line in report.stdout.splitlines():
            m = _LINE.match(line)
            if m:
                shares[m[2]] = shares.get(m[2], 0.0) + float(m[1]) / 100
        return shares

    def waking_share(self, perf: str) -> float:
        """Fraction of the samples spent waking the peers that wait on sockets (WAKING)."""
        report = subprocess.run([perf, "report", "-i", str(self.out), "--no-children", "--sort", "parent",
                                 "--parent", f"^({WAKING})$", "--stdio", "-q", "-g", "none"],
                                capture_output=True, text=True, check=True)
        return sum(float(m[1]) / 100 for m in map(_LINE.match, report.stdout.splitlines())
                   if m and m[2] != "[other]")


def split(shares: dict[str, float], cpu_s: float) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds per part, and per shared object of the own code."""
    parts = dict.fromkeys(PARTS, 0.0)
    own: dict[str, float] = {}
    for dso, share in shares.items():
        part = part_of(dso)
        parts[part] += share * cpu_s
        if part == "own code":
            own[dso] = own.get(dso, 0.0) + share * cpu_s
    return parts, own
