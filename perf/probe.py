"""A keep-alive latency probe: one GET every INTERVAL_MS on one connection, until stdin closes.

Run by the harness as a separate (pinned) process beside a load that may stall the proxy:
    python perf/probe.py PORT PATH INTERVAL_MS
A plain blocking socket (no event loop of its own to stall), and real-time priority
(SCHED_FIFO) when the process may take it: it shares its CPU with the slow clients, whose
bursts of work would otherwise be in its figures. Prints one JSON line at the end: the
samples as [CLOCK_MONOTONIC send time, latency in ms], how many requests failed, and
whether it ran real-time. A request that stalls delays the next one, so a long stall is
one long sample, not many.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys
import time


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _get(sock: socket.socket, request: bytes) -> None:
    """Send one request and read its whole response (Content-Length framed)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk


def main(port: int, path: str, interval_ms: float) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    interval = interval_ms / 1000
    samples: list[tuple[float, float]] = []
    failed = 0
    realtime = False
    with contextlib.suppress(PermissionError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        realtime = True
    sock = _connect(port)
    print("ready", flush=True)
    next_at = time.monotonic()
    while True:
        # Stop when the harness closes stdin; otherwise wait for the next tick.
        wait = max(0.0, next_at - time.monotonic())
        if select.select([sys.stdin], [], [], wait)[0]:
            break
        sent = time.monotonic()
        try:
            _get(sock, request)
        except (OSError, ConnectionError):
            failed += 1
            sock.close()
            sock = _connect(port)
            continue
        samples.append((sent, (time.monotonic() - sent) * 1000))
        next_at = max(next_at + interval, time.monotonic())
    print(json.dumps({"samples": samples, "failed": failed, "realtime": realtime}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))
