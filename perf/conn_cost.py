"""What an idle keep-alive connection holds in one rproxyd worker, and the bare uvloop floor.

    python -m perf.conn_cost rproxyd [N]             # RSS KiB per idle connection, one worker in-process
    python -m perf.conn_cost rproxyd [N] --trace     # ... and what Python allocated for them, by line
    python -m perf.conn_cost floor [N]               # the same for a bare uvloop server
    python -m perf.conn_cost rproxyd [N] --wake 3    # ... then CPU per request on a connection idle 1 s

Each mode holds N (default 10,000) idle keep-alive connections that have had one GET each
(perf/idle_client.py, as the harness's idle_10k scenario does) and reports the growth of this
process's RSS per connection. `floor` answers every request with a fixed 128-byte response
from a Protocol that keeps nothing but its transport: what uvloop itself costs per
connection, below which no proxy on this runtime can go. `--trace` runs under tracemalloc
(which inflates RSS itself: read RSS from a run without it) and lists the allocations that
the idle connections still hold, per source line and per connection. `--wake K` then makes K
rounds of one more request on every connection, each after the connections have been idle a
second (compacted, and detached from uvloop where that applies), and reports this process's CPU
time per request in each round: what a request that wakes an idle connection costs. The origin
is appliance/demo_origin.py on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import uvloop

from perf.proxies import rproxyd_base_config
from perf.tools import free_port, rss_kib, wait_port

IDLE_CLIENT = Path(__file__).with_name("idle_client.py")
FIXED = b"HTTP/1.1 200 OK\r\nContent-Length: 128\r\n\r\n" + b"x" * 128


def _hold_idle(port: int, count: int, measure, wake_rounds: int = 0) -> None:
    """Open `count` idle connections to `port`, call measure() while they are held, make
    `wake_rounds` rounds of one request on each after a second idle, then close them."""
    before = rss_kib([os.getpid()])
    snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    # "/": a path the demo origin answers 200 (the harness's nginx origin serves /small).
    proc = subprocess.Popen([sys.executable, str(IDLE_CLIENT), str(port), str(count), "/"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        print(proc.stdout.readline().strip(), flush=True)
        time.sleep(1.0)
        after = rss_kib([os.getpid()])
        print(f"RSS {before} -> {after} KiB: {(after - before) / count:.3f} KiB per idle connection")
        if snapshot is not None:
            measure(snapshot, count)
        for _ in range(wake_rounds):
            time.sleep(1.0)
            cpu = time.process_time()
            proc.stdin.write("again\n")
            proc.stdin.flush()
            done = proc.stdout.readline().strip()
            print(f"wake round {done}: {(time.process_time() - cpu) / count * 1e6:.1f} µs CPU per request",
                  flush=True)
    finally:
        proc.stdin.close()
        proc.wait(30)


def _traced(before: tracemalloc.Snapshot, count: int) -> None:
    stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"traced Python allocations: {total / count:.0f} bytes per connection")
    for s in stats[:25]:
        if s.size_diff / count >= 4:
            per_conn, blocks = s.size_diff / count, s.count_diff / count
            print(f"  {per_conn:7.1f} B/conn  {blocks:5.2f} blocks/conn  {s.traceback}")


class _Fixed(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data.endswith(b"\r\n\r\n"):
            self.transport.write(FIXED)


def floor(count: int) -> None:
    port = free_port()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Fixed, "127.0.0.1", port, backlog=4096)
        await loop.run_in_executor(None, _hold_idle, port, count, _traced)
        server.close()

    uvloop.run(serve())


def rproxyd(count: int, wake_rounds: int = 0) -> None:
    from appliance.config.loader import load
    from appliance.listeners import open_listener
    from appliance.worker import Worker

    origin_port, port = free_port(), free_port()
    origin = subprocess.Popen([sys.executable, "-m", "appliance.demo_origin", "--port", str(origin_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(origin_port, proc=origin)
        with tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp, "rproxyd.toml")
            conf.write_text(rproxyd_base_config(port, origin_port))
            config = load(conf)
        worker = Worker(config, {listener.name: open_listener(listener) for listener in config.listener})

        def drive() -> None:
            wait_port(port)
            try:
                _hold_idle(port, count, _traced, wake_rounds)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # the worker's own way to stop

        threading.Thread(target=drive, daemon=True).start()
        worker.run()
    finally:
        origin.kill()
        origin.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("rproxyd", "floor"))
    p.add_argument("count", type=int, nargs="?", default=10_000)
    p.add_argument("--trace", action="store_true", help="also list traced allocations per connection")
    p.add_argument("--wake", type=int, default=0, metavar="K",
                   help="rproxyd: then K rounds of a request on every connection idle 1 s, CPU per request")
    a = p.parse_args()
    if a.trace:
        tracemalloc.start(1)
    if a.mode == "rproxyd":
        rproxyd(a.count, a.wake)
    else:
        floor(a.count)


if __name__ == "__main__":
    main()
