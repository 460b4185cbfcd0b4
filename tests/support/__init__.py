"""Real processes and sockets for the tests: rproxyd, origins, scripted backends, raw clients."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# One port picker for tests and the bench: see its docstring for why not bind(0).
from perf.tools import free_port

BIN = Path(sys.executable).parent
RPROXYD = str(BIN / "rproxyd") if (BIN / "rproxyd").exists() else shutil.which("rproxyd")


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """The first truthy value of `predicate`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _tcp_sockets() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of this network namespace's IPv4 TCP sockets."""
    sockets = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = (int(end.rsplit(":", 1)[1], 16) for end in fields[1:3])
            sockets.append((local, remote, fields[3], fields[9]))
    return sockets


ESTABLISHED, CLOSE_WAIT, LISTEN = "01", "08", "0A"


def _socket_holder(pids: list[int], matches: Callable[[int, int, str], bool]) -> int | None:
    """Which of `pids` holds an fd of an IPv4 TCP socket for which matches(local port, remote
    port, state) holds (from /proc: a connection still queued on a listening socket has no
    holder)."""
    inodes = {f"socket:[{inode}]" for local, remote, state, inode in _tcp_sockets()
              if matches(local, remote, state)}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):  # the process or the fd went away
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
    return None


def accepted_by(pids: list[int], client_port: int) -> int | None:
    """Which of `pids` has accepted the connection from loopback port `client_port`."""
    return _socket_holder(pids, lambda _, remote, state: remote == client_port and state == ESTABLISHED)


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on `port` (a draining worker closed its own)."""
    return _socket_holder([pid], lambda local, _, state: local == port and state == LISTEN) is not None


def wait_connected_to(ports: list[int], timeout: float = 10.0) -> None:
    """Until every port in `ports` that something listens on has an established connection to it.

    How a test knows rproxyd's warm-up connections (one per server, opened when a worker
    starts) are up, from the kernel's socket table instead of a guessed sleep. Ports
    nothing listens on (servers meant to be down) are skipped. A backend that drops the
    warm connection has none left: wait for its ScriptedBackend.connections instead.
    """
    def all_connected() -> bool:
        sockets = _tcp_sockets()
        listening = {local for local, _, state, _ in sockets if state == LISTEN}
        connected = {remote for _, remote, state, _ in sockets if state == ESTABLISHED}
        return all(port in connected for port in ports if port in listening)

    wait_for(all_connected, timeout, f"connections to ports {ports}")


def wait_dropped(backend: ScriptedBackend, timeout: float = 10.0) -> None:
    """Until `backend` accepted a connection and the proxy closed its side of every one.

    For a backend that drops rproxyd's warm-up connection: from then on a request finds no
    open connection to it and waits for a new one.
    """
    def dropped() -> bool:
        open_states = (ESTABLISHED, CLOSE_WAIT)
        return backend.connections > 0 and not any(
            remote == backend.port and state in open_states for _, remote, state, _ in _tcp_sockets())

    wait_for(dropped, timeout, f"the proxy to close its connection to port {backend.port}")


class Origin:
    """The bundled demo origin (stdlib http.server), as its own process."""

    def __init__(self, name: str = "demo", port: int | None = None, max_requests: int = 0) -> None:
        self.name = name
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.demo_origin", "--port", str(self.port), "--name", name,
             "--max-requests", str(max_requests)],
            stdout=subprocess.DEVNULL,
        )
        wait_port(self.port, proc=self.proc)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def proxy_config(
    port: int,
    backends: dict[str, list[str]],
    routes: list[tuple[str, str]] | None = None,
    backend_options: str = "",
    limits: str = "",
    extra: str = "",
    workers: int = 1,
    vhosts: str | None = None,
) -> str:
    """A TOML config: one listener, the given backends, one catch-all vhost.

    One worker by default, so per-worker behaviour (pools, queues) is deterministic.
    `vhosts`, when given, is TOML that replaces the catch-all vhost and its routes.
    Server entries starting with "{" are inline tables ({address = ..., weight = N}).
    """
    parts = [f'[process]\nworkers = {workers}\n',
             f'[[listener]]\nname = "http"\nbind = "127.0.0.1:{port}"\n']
    for name, servers in backends.items():
        listed = ", ".join(s if s.startswith("{") else f'"{s}"' for s in servers)
        parts.append(f"[backend.{name}]\nservers = [{listed}]\n{textwrap.dedent(backend_options)}\n")
    if vhosts is not None:
        parts.append(textwrap.dedent(vhosts))
    else:
        parts.append('[[vhost]]\nname = "default"\nhosts = ["*"]\n')
        for prefix, backend in routes or [("/", next(iter(backends)))]:
            parts.append(f'[[vhost.route]]\npath = "{prefix}"\nbackend = "{backend}"\n')
    if limits:
        parts.append("[limits]\n" + textwrap.dedent(limits))
    parts.append(textwrap.dedent(extra))
    return "\n".join(parts)


class Proxy:
    """rproxyd started from a config file, waited for until its workers serve."""

    def __init__(self, config_dir: Path, config_text: str, port: int, workers: int = 1) -> None:
        self.port = port
        self.config_path = config_dir / "rproxy.toml"
        self.config_path.write_text(config_text)
        self.log_path = config_dir / "rproxyd.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [RPROXYD, "-c", str(self.config_path)], stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_port(port, proc=self.proc)
        # The supervisor listens before it forks: a test starts once its workers serve
        # (their RSS counted, their warm-up connections being opened).
        self.serving_workers(workers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """Resident memory of the proxy and its children, in KiB."""
        total = 0
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def worker_pids(self) -> list[int]:
        """The supervisor's children: its workers."""
        return _children(self.proc.pid)

    def serving_workers(self, count: int = 1, timeout: float = 10.0) -> list[int]:
        """The workers' pids once `count` of them serve (the supervisor listens before it forks)."""
        wait_for(lambda: len(re.findall(r"\bworker \d+ serving ", self.log())) >= count, timeout,
                 f"{count} worker(s) serving")
        return self.worker_pids()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(child) for child in text.split()]
    return found


class ScriptedBackend:
    """A raw TCP backend whose behaviour per connection is a Python function.

    For faults a well-behaved origin never shows: closing idle connections,
    resets, silence, malformed responses. It records every request head it reads.
    """

    def __init__(self, handler: Callable[[socket.socket, ScriptedBackend], None]) -> None:
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self._closing = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn, self)

    def read_head(self, conn: socket.socket, timeout: float = 10.0) -> bytes | None:
        """Read one request head (up to the blank line); None when the peer closed."""
        conn.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece:
                return None
            data += piece
        head, _, rest = data.partition(b"\r\n\r\n")
        self.requests.append(head + b"\r\n\r\n" + rest)
        return head + b"\r\n\r\n" + rest

    def stop(self) -> None:
        self._closing = True
        self.sock.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, shut_write: bool = False) -> bytes:
    """Send raw bytes to the proxy and read until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock, timeout)


def read_all(sock: socket.socket, timeout: float) -> bytes:
    return read_until_close(sock, timeout)[0]


def read_until_close(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What the peer sends until it closes, and whether it closed before `timeout` of silence."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while piece := sock.recv(65536):
            chunks.append(piece)
    except TimeoutError:
        return b"".join(chunks), False
    except ConnectionResetError:
        pass
    return b"".join(chunks), True


def recv_until(sock: socket.socket, suffix: bytes, timeout: float = 5.0) -> bytes:
    """Read until the received bytes end with `suffix` (a response split over writes)."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(suffix):
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


def status_codes(raw: bytes) -> list[int]:
    """Status codes of every response head in a raw byte stream, in order."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


@contextlib.contextmanager
def running(*things: Origin | Proxy | ScriptedBackend) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in things:
            thing.stop()


def served_by(response: object) -> str:
    """Which demo origin answered an httpx response (its X-Origin), or "proxy:STATUS"."""
    return response.headers.get("x-origin", f"proxy:{response.status_code}")


def curl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)
