"""The load of the tunnel scenarios, through a proxy to perf/ws_origin.py; prints one JSON line.

    python perf/ws_load.py echo PORT CONNS SECONDS SIZE WINDOW
        CONNS WebSocket connections to /ws/echo, each keeping WINDOW masked binary messages of
        SIZE bytes in flight; "requests" counts messages echoed back whole.
    python perf/ws_load.py bulk PORT BYTES
        one WebSocket connection to /ws/sink/BYTES that sends BYTES after the 101 (raw bytes, as
        one stream through the tunnel) and waits for the origin's "done".

uvloop protocols, so that one load process keeps a proxy's worker busy.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time

import uvloop

HANDSHAKE = ("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def masked_frame(size: int) -> bytes:
    """One final binary frame of `size` random bytes, masked as a client's must be."""
    header = b"\x82" + (bytes([0x80 | size]) if size < 126 else b"\xfe" + struct.pack("!H", size))
    mask = os.urandom(4)
    payload = os.urandom(size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class _Client(asyncio.Protocol):
    def __init__(self, path: str, on_open: asyncio.Future) -> None:
        self.path = path
        self.on_open = on_open
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.open = False
        self.received = 0
        self.on_data = None
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(HANDSHAKE.format(path=self.path).encode())

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.received += len(data)
            self.on_data(self)
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            head, _, rest = self.head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.on_open.set_exception(RuntimeError(head.split(b"\r\n")[0].decode()))
                return
            self.open = True
            self.on_open.set_result(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.on_open.done():
            self.on_open.set_exception(ConnectionError("closed before the 101"))
        self.open = False


async def _connect(port: int, path: str) -> tuple[_Client, bytes]:
    loop = asyncio.get_running_loop()
    opened: asyncio.Future = loop.create_future()
    _, client = await loop.create_connection(lambda: _Client(path, opened), "127.0.0.1", port)
    rest = await opened
    return client, rest


async def echo(port: int, conns: int, seconds: float, size: int, window: int) -> dict:
    frame = masked_frame(size)
    burst = frame * window
    counts = {"messages": 0}

    def on_data(client: _Client) -> None:
        whole, client.received = divmod(client.received, len(frame))
        if whole:
            counts["messages"] += whole
            if not stop:
                client.transport.write(frame * whole)  # keep `window` messages in flight

    stop = False
    clients = []
    for _ in range(conns):
        client, rest = await _connect(port, "/ws/echo")
        client.received = len(rest)
        client.on_data = on_data
        clients.append(client)
    started = time.monotonic()
    for client in clients:
        client.transport.write(burst)
    await asyncio.sleep(seconds)
    stop = True
    elapsed = time.monotonic() - started
    messages = counts["messages"]
    for client in clients:
        client.transport.close()
    return {"requests": messages, "bytes": messages * len(frame) * 2, "seconds": elapsed, "errors": {}}


async def bulk(port: int, total: int) -> dict:
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    client, _ = await _connect(port, f"/ws/sink/{total}")
    client.on_data = lambda c: done.done() or done.set_result(None)
    block = os.urandom(1 << 20)
    client.transport.set_write_buffer_limits(high=4 * len(block))
    started = time.monotonic()
    sent = 0
    while sent < total:  # flow control by the transport: wait whenever its buffer is full
        chunk = block[: min(len(block), total - sent)]
        client.transport.write(chunk)
        sent += len(chunk)
        await client.writable.wait()
    await asyncio.wait_for(done, 120)
    elapsed = time.monotonic() - started
    client.transport.close()
    return {"requests": 1, "bytes": total, "seconds": elapsed, "errors": {}}


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    if kind == "echo":
        conns, seconds, size, window = int(argv[2]), float(argv[3]), int(argv[4]), int(argv[5])
        result = uvloop.run(echo(port, conns, seconds, size, window))
    else:
        result = uvloop.run(bulk(port, int(argv[2])))
    print("WSJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
