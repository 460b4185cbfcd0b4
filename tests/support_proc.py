"""Real processes for the supervisor tests: a demo origin, rproxyd, a systemd notify
socket, and a bounded load generator that classifies every failure.

Everything binds port 0 (rproxyd reports the port it got in status.json), so
parallel runs never collide.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import accepted_by, listens_on, wait_for

GREETING = b"Hello from the rproxyd demo origin\n"


@contextlib.contextmanager
def demo_origin() -> Iterator[int]:
    """A threaded stdlib origin on a free port; yields the port."""
    proc = subprocess.Popen([sys.executable, "-m", "appliance.demo_origin", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        yield int(line.rsplit(":", 1)[1].strip("/\n"))
    finally:
        proc.terminate()
        proc.wait(10)


def config_text(origin_port: int, run_dir: Path, extra: str = "", listeners: int = 1,
                process: str = "") -> str:
    """A configuration for the demo origin; `process` adds [process] keys, `extra` more tables."""
    blocks = [f'[[listener]]\nname = "l{i}"\nbind = "127.0.0.1:0"\n' for i in range(listeners)]
    return "\n".join(blocks) + f"""
[backend.demo]
servers = ["127.0.0.1:{origin_port}"]

[[vhost]]
name = "default"

[[vhost.route]]
backend = "demo"

[process]
runtime_dir = "{run_dir}"
heartbeat_timeout = "2s"
boot_timeout = "10s"
{process}

[log]
file = "{run_dir}/rproxyd.log"
{extra}
"""


class NotifySocket:
    """A stand-in for systemd's NOTIFY_SOCKET that records every datagram.

    A thread reads continuously, as systemd does: the supervisor's notify socket is
    non-blocking, so datagrams a reader leaves queued past the queue limit are dropped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))

    def poll(self) -> list[dict[str, str]]:
        time.sleep(0.1)  # let the reader catch up with what was just sent
        return list(self.messages)

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5)
        self.sock.close()


class Rproxyd:
    """One supervisor run in the foreground, as systemd would run it."""

    def __init__(self, directory: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.run_dir = directory / "run"
        self.config_path = directory / "rproxy.toml"
        self.config_path.write_text(config)
        self.log_path = self.run_dir / "rproxyd.log"
        self.run_dir.mkdir(exist_ok=True)
        self.stderr = open(directory / "stderr.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "-c", str(self.config_path)],
            stderr=self.stderr, stdout=self.stderr, env={**os.environ, **(env or {})},
        )
        self.pid = self.proc.pid
        self.wait_running()

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_running(self, generation: int | None = None, timeout: float = 15.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"rproxyd exited with {self.proc.returncode}: {self.log()}")
            st = self.status()
            if st.get("pid") != self.pid or st.get("phase") != "running":
                return None
            if generation is not None and st["generation"] != generation:
                return None
            workers = [w for w in st["workers"] if w["generation"] == st["generation"]]
            return st if workers and all(w["state"] == "accepting" for w in workers) else None
        return wait_for(ready, timeout, f"rproxyd running generation {generation}")

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.status()["listeners"]["l0"].rsplit(":", 1)
        return host, int(port)

    def current_workers(self) -> list[dict[str, Any]]:
        st = self.status()
        return [w for w in st["workers"] if w["generation"] == st["generation"]]

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def reload(self, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """What systemd's ExecReload runs."""
        return subprocess.run(
            [sys.executable, "-m", "appliance", "--reload", str(self.pid), "-c", str(self.config_path)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.stderr.close()


def accepted_when_draining(proxy: Rproxyd, port: int) -> socket.socket:
    """A connection to `port`, nothing sent on it yet, that a worker has accepted and that the
    worker still holds when a reload has made it drain (it stopped listening)."""
    sock = socket.create_connection(("127.0.0.1", port), 5)
    pids = [worker["pid"] for worker in proxy.current_workers()]
    holder = wait_for(lambda: accepted_by(pids, sock.getsockname()[1]), 5, "a worker to accept")
    result = proxy.reload()
    assert result.returncode == 0, result.stderr
    wait_for(lambda: not listens_on(holder, port), 5, "the old worker to stop listening")
    return sock


def get(address: tuple[str, int], path: str = "/", timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """One request on a fresh connection: (status, head, body)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@dataclass
class LoadResult:
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    # Keep-alive requests that met a connection the server had closed while idle, before
    # any response byte, and were retried on a new connection (RFC 9112 section 9.3.1).
    retried_idle_closes: Counter[str] = field(default_factory=Counter)  # by kind: eof or reset
    failure_times: list[float] = field(default_factory=list)


class Load:
    """Bounded client load from threads: fresh-connection clients and keep-alive clients.

    Every request is checked (status 200 and the exact body); any other outcome is a
    failure, classified: reset, refused, timeout, eof (closed before a full response),
    bad-status.
    """

    def __init__(self, address: tuple[str, int], fresh: int = 3, keepalive: int = 2,
                 max_seconds: float = 60.0, max_requests: int = 200_000) -> None:
        self.address = address
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._max = max_requests
        self._threads = [threading.Thread(target=self._fresh_client, daemon=True) for _ in range(fresh)]
        self._threads += [threading.Thread(target=self._keepalive_client, daemon=True)
                          for _ in range(keepalive)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.result

    def wait_requests(self, count: int, timeout: float = 20.0) -> None:
        start = self.result.ok
        wait_for(lambda: self.result.ok >= start + count, timeout, f"{count} more requests")

    def _running(self) -> bool:
        return (not self._stop.is_set() and time.monotonic() < self._deadline
                and self.result.ok + sum(self.result.failures.values()) < self._max)

    def _record(self, failure: str | None) -> None:
        with self._lock:
            if failure is None:
                self.result.ok += 1
            else:
                self.result.failures[failure] += 1
                self.result.failure_times.append(time.monotonic())

    @staticmethod
    def _classify(exc: BaseException) -> str:
        if isinstance(exc, ConnectionResetError | BrokenPipeError):
            return "reset"
        if isinstance(exc, ConnectionRefusedError):
            return "refused"
        if isinstance(exc, TimeoutError):
            return "timeout"
        return f"error:{type(exc).__name__}"

    def _fresh_client(self) -> None:
        while self._running():
            try:
                status, _, body = get(self.address, timeout=10)
                failure = None if body == GREETING else (
                    "truncated" if status == 200 else f"bad-status:{status}")
            except (OSError, ValueError, IndexError) as exc:
                failure = self._classify(exc)
            self._record(failure)

    def _keepalive_client(self) -> None:
        sock: socket.socket | None = None
        reused = False
        while self._running():
            try:
                if sock is None:
                    sock = socket.create_connection(self.address, timeout=10)
                    reused = False
                sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                head, body, close = self.read_response(sock)
            except _NothingReceived as exc:
                if sock is not None:
                    sock.close()
                sock = None
                if reused:
                    with self._lock:
                        self.result.retried_idle_closes[exc.kind] += 1
                    continue  # the same request again, on a new connection
                self._record(exc.kind)
                continue
            except (OSError, ValueError) as exc:
                if sock is not None:
                    sock.close()
                sock = None
                self._record(self._classify(exc))
                continue
            ok = head.startswith(b"HTTP/1.1 200") and body == GREETING
            self._record(None if ok else "bad-status")
            reused = True
            if close:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    @staticmethod
    def read_response(sock: socket.socket) -> tuple[bytes, bytes, bool]:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise _NothingReceived("eof") if not data else ValueError("eof in head")
                data += chunk
        except ConnectionResetError:
            if not data:
                raise _NothingReceived("reset") from None
            raise
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("eof in body")
            body += chunk
        return head, body, b"connection: close" in lines


class _NothingReceived(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind
