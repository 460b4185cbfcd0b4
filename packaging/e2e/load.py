"""Bounded HTTP load for the end-to-end test: counts every failed request.

Runs CONCURRENCY threads against one URL until DURATION passes or STOP_FILE
appears. Half the threads keep one connection alive, half open a new
connection per request (that exercises the accept queues a reload or upgrade
must not drop). Each thread pauses INTERVAL between requests, which bounds the
rate to CONCURRENCY / INTERVAL.

A request fails if it raises, times out, answers other than 200, or its body
lacks EXPECT. The one exception is what every HTTP client does (RFC 9112
section 9.3.1): a GET on a reused keep-alive connection that the server closed
before sending any byte of a response is retried once on a new connection;
those are counted as stale_retries, and fail if the retry fails.

Prints a JSON summary; exits 0 if nothing failed and something succeeded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from urllib.parse import urlsplit

STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.stale_retries = 0
        self.errors: list[str] = []

    def add(self, ok: bool, error: str = "") -> None:
        with self.lock:
            if ok:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {error}")

    def stale(self) -> None:
        with self.lock:
            self.stale_retries += 1


def one_request(conn: http.client.HTTPConnection, path: str, expect: bytes) -> str:
    """Send one GET on conn; return "" on success or why it failed."""
    conn.request("GET", path, headers={"User-Agent": "rproxyd-e2e-load"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        return f"status {response.status}"
    if expect not in body:
        return f"unexpected body {body[:60]!r}"
    if response.will_close:
        conn.close()
    return ""


def client(args: argparse.Namespace, keepalive: bool, tally: Tally, stop: threading.Event) -> None:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = url.path or "/"
    expect = args.expect.encode()
    conn: http.client.HTTPConnection | None = None
    used = False
    while not stop.is_set():
        if conn is None or not keepalive:
            conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
            used = False
        try:
            try:
                error = one_request(conn, path, expect)
            except STALE:
                if not used:
                    raise
                tally.stale()
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
                error = one_request(conn, path, expect)
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        tally.add(not error, error)
        used = True
        if error or not keepalive or conn.sock is None:
            conn.close()
            conn = None
        stop.wait(args.interval)
    if conn is not None:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1/")
    parser.add_argument("--expect", default="", help="text every response body must contain")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=300.0, help="upper bound on the run")
    parser.add_argument("--stop-file", default="", help="stop once this file exists")
    args = parser.parse_args()

    tally = Tally()
    stop = threading.Event()
    threads = [
        threading.Thread(target=client, args=(args, i % 2 == 0, tally, stop), daemon=True)
        for i in range(args.concurrency)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while time.monotonic() - started < args.duration:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(args.timeout + 5)
    elapsed = time.monotonic() - started
    print(json.dumps({
        "ok": tally.ok, "failed": tally.failed, "stale_retries": tally.stale_retries,
        "seconds": round(elapsed, 1), "rps": round(tally.ok / elapsed) if elapsed else 0,
        "errors": tally.errors,
    }))
    return 0 if tally.failed == 0 and tally.ok > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
