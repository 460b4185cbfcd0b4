"""The WebSocket origin of the tunnel scenarios: accepts any WebSocket handshake with a 101, then
`/ws/echo...` echoes every byte back and `/ws/sink/N` reads N bytes and answers "done".

After the 101 it handles raw bytes, not frames: the proxies under test relay bytes and never
parse frames, and the load (perf/ws_load.py) counts whole echoed frames itself. uvloop, one
process, on the load generator's CPU, like the nginx origin.

    python perf/ws_origin.py PORT
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import sys

import uvloop

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsOrigin(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.mode = ""  # "" until the handshake, then "echo" or "sink"
        self.left = 0  # sink: bytes still to read

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.mode == "echo":
            self.transport.write(data)
        elif self.mode == "sink":
            self.left -= len(data)
            if self.left <= 0:
                self.transport.write(b"done")
        else:
            self._handshake(data)

    def _handshake(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, _, rest = self.head.partition(b"\r\n\r\n")
        key = re.search(rb"(?i)\r\nsec-websocket-key:\s*(\S+)", head)
        path = head.split(b" ", 2)[1]
        accept = base64.b64encode(hashlib.sha1((key.group(1) if key else b"") + _GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        if path.startswith(b"/ws/sink/"):
            self.mode, self.left = "sink", int(path.rsplit(b"/", 1)[1])
        else:
            self.mode = "echo"
        if rest:
            self.data_received(rest)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(WsOrigin, "127.0.0.1", port, backlog=4096)
    print(f"ws origin on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
