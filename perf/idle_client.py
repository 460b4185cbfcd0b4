"""Open N keep-alive connections, make one request on each, then hold them idle.

Run by the harness as a separate (pinned) process:
    python perf/idle_client.py PORT COUNT PATH
Prints one JSON line {"ready": n_ok, "failed": n_failed, "non_2xx": k} once every connection has
had its answer (or after DEADLINE_S), then holds them until stdin closes, and exits. Each line
"again" on stdin makes one more request on every held connection (perf/conn_cost.py --wake:
what a request on a long-idle connection costs), answered by a JSON line when all are done.
"""

from __future__ import annotations

import asyncio
import json
import sys

DEADLINE_S = 60


async def _one(port: int, path: str, sem: asyncio.Semaphore, keep: list, stats: dict) -> None:
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (TimeoutError, OSError):
            stats["failed"] += 1
            return
        await _request(reader, writer, path, keep, stats)


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, keep: list,
                   stats: dict) -> None:
    """One GET on an open connection; kept in `keep` when answered."""
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await asyncio.wait_for(reader.readexactly(length), 10)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        stats["failed"] += 1
        return
    if not 200 <= status < 300:
        stats["non_2xx"] += 1
    keep.append((reader, writer))


async def main(port: int, count: int, path: str) -> None:
    sem = asyncio.Semaphore(256)
    keep: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    stats = {"failed": 0, "non_2xx": 0}
    tasks = [asyncio.ensure_future(_one(port, path, sem, keep, stats)) for _ in range(count)]
    # Bounded: whatever has not been answered within DEADLINE_S counts as failed.
    _, pending = await asyncio.wait(tasks, timeout=DEADLINE_S)
    for t in pending:
        t.cancel()
    stats["failed"] += len(pending)
    print(json.dumps({"ready": len(keep), **stats}), flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "again":
        held, keep = keep, []
        stats = {"failed": 0, "non_2xx": 0}
        await asyncio.wait([asyncio.ensure_future(_again(path, sem, pair, keep, stats)) for pair in held],
                           timeout=DEADLINE_S)
        print(json.dumps({"ready": len(keep), **stats}), flush=True)
    for _, w in keep:
        w.close()


async def _again(path: str, sem: asyncio.Semaphore, pair: tuple, keep: list, stats: dict) -> None:
    async with sem:
        await _request(*pair, path, keep, stats)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "/small"))
