"""System helpers for the benchmark: packages, ports, CPU pinning, /proc accounting, processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# Debian package for each tool the harness drives.
PACKAGES = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "h2load": "nghttp2-client",
            "nghttp": "nghttp2-client", "openssl": "openssl", "taskset": "util-linux", "perf": "linux-perf"}
_SBIN = ("/usr/sbin", "/sbin")


def hold_bench_lock(work: Path, who: str) -> TextIO:
    """Take the scratch directory's benchmark lock (one benchmark at a time per machine: two
    would skew each other and share `work`), or exit naming the holder's file. Held while the
    returned file stays open."""
    work.mkdir(parents=True, exist_ok=True)
    lock = open(work / ".lock", "w")  # noqa: SIM115 - the caller holds it for its whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise SystemExit(f"{who}: another benchmark holds {work / '.lock'}") from None
    return lock


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for d in _SBIN:
        cand = Path(d) / tool
        if cand.exists():
            return str(cand)
    return None


def ensure_tools(tools: list[str]) -> dict[str, str]:
    """Install missing tools from Debian packages (apt-get update once first); return tool -> path."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        pkgs = sorted({PACKAGES[t] for t in missing})
        log(f"installing {' '.join(pkgs)} with apt-get")
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        # Debian starts a default nginx/haproxy on install; the benchmark runs its own on free ports.
        for svc in ("nginx", "haproxy"):
            if svc in pkgs:
                subprocess.run([*sudo, "systemctl", "stop", svc], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=False)
    paths = {}
    for t in tools:
        p = which(t)
        if p is None:
            raise SystemExit(f"bench: {t} is still missing after apt-get install")
        paths[t] = p
    return paths


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds, below the kernel's ephemeral range.

    A port from bind(("127.0.0.1", 0)) is an ephemeral one, the range the kernel also
    draws the source ports of outgoing connections from: between this check and the
    server's own bind, a load generator's or a proxy's connection could take it, and
    the server fails with EADDRINUSE (seen in a bench run). Ports below the range are
    only ever taken by explicit binds, which the bind below detects. Random picks keep
    parallel runs (tests under xdist, a bench beside them) apart.
    """
    high = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(10000, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a TIME_WAIT user also counts as busy
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found in 10000-{high}")


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# ---------------------------------------------------------------- CPU layout


@dataclass
class CpuPlan:
    """Which CPUs the proxy under test and the load side (load generator + origin) may use."""

    proxy: list[int]
    load: list[int]
    pinned: bool
    note: str

    def wrap_proxy(self, argv: list[str]) -> list[str]:
        return self._wrap(self.proxy, argv)

    def wrap_load(self, argv: list[str]) -> list[str]:
        return self._wrap(self.load, argv)

    def _wrap(self, cpus: list[int], argv: list[str]) -> list[str]:
        if not self.pinned:
            return argv
        return ["taskset", "-c", ",".join(map(str, cpus)), *argv]


def plan_cpus(workers: int) -> CpuPlan:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or which("taskset") is None:
        return CpuPlan(cpus, cpus, False, f"{len(cpus)} CPU(s) usable: no pinning, proxy and load share")
    n_proxy = max(1, min(workers, len(cpus) // 2))
    proxy, load = cpus[:n_proxy], cpus[n_proxy:]
    return CpuPlan(proxy, load, True,
                   f"proxy under test pinned to CPU {','.join(map(str, proxy))}; load generator and "
                   f"origin pinned to CPU {','.join(map(str, load))} (taskset)")


# ---------------------------------------------------------------- /proc accounting


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx master + workers, etc.)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime+stime (clock ticks) per live pid."""
    out = {}
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            out[pid] = int(f[11]) + int(f[12])  # fields 14 and 15 of /proc/PID/stat
    return out


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds used between two snapshots; processes born in between count from zero."""
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items())
    return ticks / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE_KIB
    return total


# ---------------------------------------------------------------- processes


@dataclass
class Service:
    """A long-running process the harness started (origin or a proxy)."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    extra_ports: dict[str, int] = field(default_factory=dict)
    env: dict | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        logf.close()
        wait_port(self.port, timeout, self.proc)
        for p in self.extra_ports.values():
            wait_port(p, timeout, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        return process_tree(self.pid) if self.alive() else []

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Only our own process group: the service was started in a new session.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class PerfAttached:
    """A `perf` command attached to some processes for the duration of a `with` block."""

    def __init__(self, argv: list[str], pids: list[int], settle: float) -> None:
        self.argv = [*argv, "-p", ",".join(str(pid) for pid in pids)]
        self.settle = settle  # seconds for perf to attach before the load starts
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> PerfAttached:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(self.settle)
        if self.proc.poll() is not None:
            raise RuntimeError(f"{' '.join(self.argv[:2])} failed: {self.proc.stderr.read().strip()[-300:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_capture(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


# ---------------------------------------------------------------- machine description


def machine_info(paths: dict[str, str]) -> dict:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])

    def ver(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "missing"
        out = (r.stdout + r.stderr).strip().splitlines()
        return out[0].strip() if out else "unknown"

    import httptools
    import uvloop

    from appliance import __version__ as rproxyd_version

    osname = "unknown"
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip().strip('"')
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False, cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "appliance"], capture_output=True,
                           text=True, check=False, cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "mem_gib": round(mem_kib / 1048576, 1),
        "kernel": platform.release(),
        "os": osname,
        "python": platform.python_version(),
        "rproxyd": f"{rproxyd_version} (git {git or '?'}{', appliance/ modified' if dirty else ''})",
        "uvloop": uvloop.__version__,
        "httptools": httptools.__version__,
        "nginx": ver([paths["nginx"], "-v"]).replace("nginx version: ", ""),
        "haproxy": ver([paths["haproxy"], "-v"]).split(" - ")[0].replace("HAProxy version ", ""),
        "wrk": ver([paths["wrk"], "-v"]).split(" [")[0],
        "h2load": ver([paths["h2load"], "--version"]),
        "openssl": ver(["openssl", "version"]),
    }
