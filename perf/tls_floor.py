"""Calibration for the TLS scenarios: the cheapest TLS server rproxyd's runtime allows.

    python perf/tls_floor.py --workers N [--relay ORIGIN_PORT] PORT:CERT:KEY [PORT:CERT:KEY ...]

uvloop and the stdlib `ssl` module, as rproxyd uses them, with one Protocol that answers
every request with a fixed 128-byte response and closes: no parsing, no routing, no backend,
no tickets of our own (OpenSSL's built-in keys, one TLS 1.3 ticket per handshake as rproxyd
sends). Whatever a proxy on this runtime does per connection comes on top of this, so its
handshakes per CPU-second bound rproxyd's from above. N processes share each port
(SO_REUSEPORT), like N workers.

With --relay, the relay floor: the same server, but each request's answer is fetched from
the origin over a pooled keep-alive connection, and relayed to the client as it came (one
fixed HTTP/1.1 GET of the client's path, the response's end found by its Content-Length).
That is the one thing every reverse proxy adds to the floor, a backend round trip, with
nothing else: no request parsing beyond the path, no header policy, no state machines. The
distance from the floor to the relay floor is what the runtime charges for the round trip;
the distance from the relay floor to rproxyd is rproxyd's own request path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 128\r\nConnection: close\r\n\r\n" + b"0" * 128
LENGTH = b"\r\ncontent-length:"


class FixedResponse(asyncio.Protocol):
    """Answers the first complete request head (`answer`) and closes the connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.head = b""

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.answer()

    def answer(self) -> None:
        self.transport.write(RESPONSE)
        self.transport.close()


class OriginPool:
    """Keep-alive connections to the origin: idle ones, and one more opened whenever none is."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[OriginConnection] = []
        self.waiting: list[tuple[RelayedResponse, bytes]] = []
        self.opening: set[asyncio.Task] = set()  # connections being opened, referenced until done

    def send(self, client: RelayedResponse, request: bytes) -> None:
        if self.idle:
            self.idle.pop().send(client, request)
            return
        self.waiting.append((client, request))
        loop = asyncio.get_running_loop()
        opened = loop.create_connection(lambda: OriginConnection(self), "127.0.0.1", self.port)
        task = loop.create_task(opened)
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    def release(self, conn: OriginConnection) -> None:
        if self.waiting:
            conn.send(*self.waiting.pop(0))
        else:
            self.idle.append(conn)


class OriginConnection(asyncio.Protocol):
    """One keep-alive connection to the origin, relaying one response at a time."""

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool
        self.client: RelayedResponse | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pool.release(self)

    def send(self, client: RelayedResponse, request: bytes) -> None:
        self.client = client
        self.buffer = b""
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        start = self.buffer.lower().find(LENGTH, 0, end) + len(LENGTH)
        length = int(self.buffer[start:self.buffer.find(b"\r\n", start)])
        if len(self.buffer) < end + 4 + length:
            return
        client, self.client = self.client, None
        client.transport.write(self.buffer)
        client.transport.close()
        self.pool.release(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.client is not None:  # the origin went away mid-response: so does the client
            self.client.transport.close()


class RelayedResponse(FixedResponse):
    """Sends the request's path to the origin and closes after relaying its response."""

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool

    def answer(self) -> None:
        path = self.head.split(b" ", 2)[1]
        self.pool.send(self, b"GET " + path + b" HTTP/1.1\r\nHost: origin\r\n\r\n")


async def serve(listeners: list[tuple[int, str, str]], relay: int | None) -> None:
    loop = asyncio.get_running_loop()
    if relay is None:
        factory = FixedResponse
    else:
        pool = OriginPool(relay)
        def factory() -> RelayedResponse:
            return RelayedResponse(pool)
    for port, cert, key in listeners:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ctx.num_tickets = 1
        await loop.create_server(factory, "127.0.0.1", port, ssl=ctx, backlog=1024, reuse_port=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--relay", type=int, default=None, metavar="ORIGIN_PORT",
                   help="the relay floor: fetch each answer from the origin on 127.0.0.1:ORIGIN_PORT")
    p.add_argument("listeners", nargs="+", metavar="PORT:CERT:KEY")
    a = p.parse_args()
    listeners = [(int(port), cert, key) for port, cert, key in (x.split(":", 2) for x in a.listeners)]
    for _ in range(a.workers - 1):
        if os.fork() == 0:
            break
    uvloop.run(serve(listeners, a.relay))


if __name__ == "__main__":
    main()
