"""Open N connections that dribble a request head and never finish it, so all hit the header timeout.

Run by the harness as a separate (pinned) process:
    python perf/slow_headers.py PORT COUNT DRIBBLE_S GIVE_UP_S
All connections are opened as fast as the kernel takes them (non-blocking connects in a
tight loop, a few hundred in flight at a time so the listen backlog never overflows), so
the proxy's timers expire as close together as its own accept loop allows. Each connection
sends a request line and Host at once, then one more header line every DRIBBLE_S seconds (a
per-read timeout would never fire; the proxies' header timeouts are for the whole head), and
waits for the proxy to end it. It answers the proxy's FIN with its own close, as a browser
does. Prints one JSON line once every connection has ended (or after GIVE_UP_S): how each
ended (a 408 or other answer, a bare close, a reset, still open) and CLOCK_MONOTONIC times of
the opening, of the last dribble round before the first end, and of the ends, which the
harness lines up with the latency probe's samples (perf/probe.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import sys
import time

IN_FLIGHT = 256  # connects not yet completed, at most (listen backlogs are 1024)
HEAD = b"GET /small HTTP/1.1\r\nHost: bench\r\n"


def main(port: int, count: int, dribble: float, give_up: float) -> None:
    outcomes = dict.fromkeys(("answered_408", "answered_other", "closed", "reset", "connect_failed",
                              "still_open"), 0)
    sel = selectors.DefaultSelector()
    connecting: set[socket.socket] = set()
    opened: dict[socket.socket, float] = {}
    ends: list[float] = []
    started = time.monotonic()
    to_open = count
    while to_open or connecting:
        while to_open and len(connecting) < IN_FLIGHT:
            sock = socket.socket()
            sock.setblocking(False)
            if sock.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
                outcomes["connect_failed"] += 1
                sock.close()
            else:
                connecting.add(sock)
                sel.register(sock, selectors.EVENT_WRITE)
            to_open -= 1
        for key, _ in sel.select(1.0):
            sock = key.fileobj
            connecting.discard(sock)
            sel.unregister(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                outcomes["connect_failed"] += 1
                sock.close()
                continue
            opened[sock] = time.monotonic()
            sock.send(HEAD)
            sel.register(sock, selectors.EVENT_READ)
        if time.monotonic() - started > give_up:
            break
    times = list(opened.values())
    rounds: list[float] = []  # when each dribble round was sent
    next_line, line = started + dribble, 0
    while opened and time.monotonic() - started < give_up:
        now = time.monotonic()
        if now >= next_line:
            line += 1
            for sock in opened:
                with contextlib.suppress(OSError):  # a reset: the read below finds out
                    sock.send(b"X-Dribble-%d: slow\r\n" % line)
            rounds.append(time.monotonic())
            next_line += dribble
        for key, _ in sel.select(max(0.0, min(next_line - now, 1.0))):
            sock = key.fileobj
            try:
                answer = sock.recv(64)
            except OSError:
                outcomes["reset"] += 1
            else:
                if answer.startswith((b"HTTP/1.1 408", b"HTTP/1.0 408")):
                    outcomes["answered_408"] += 1
                elif answer:
                    outcomes["answered_other"] += 1
                else:
                    outcomes["closed"] += 1
            ends.append(time.monotonic())
            sel.unregister(sock)
            del opened[sock]
            sock.close()
    outcomes["still_open"] = len(opened) + len(connecting)
    first_end = min(ends, default=started)
    print(json.dumps({
        **outcomes,
        "started": started,
        "opened_first": min(times, default=started),
        "opened_last": max(times, default=started),
        "ended_first": min(ends, default=started),
        "ended_last": max(ends, default=started),
        "dribbled_last": max((t for t in rounds if t < first_end), default=started),
    }), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
