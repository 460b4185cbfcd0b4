"""Calibration for the TLS scenarios: the cheapest TLS server rproxyd's runtime allows.

    python perf/tls_floor.py --workers N PORT:CERT:KEY [PORT:CERT:KEY ...]

uvloop and the stdlib `ssl` module, as rproxyd uses them, with one Protocol that answers
every request with a fixed 128-byte response and closes: no parsing, no routing, no backend,
no tickets of our own (OpenSSL's built-in keys, one TLS 1.3 ticket per handshake as rproxyd
sends). Whatever a proxy on this runtime does per connection comes on top of this, so its
handshakes per CPU-second bound rproxyd's from above. N processes share each port
(SO_REUSEPORT), like N workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 128\r\nConnection: close\r\n\r\n" + b"0" * 128


class FixedResponse(asyncio.Protocol):
    """Answers the first complete request head and closes the connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.head = b""

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.transport.write(RESPONSE)
            self.transport.close()


async def serve(listeners: list[tuple[int, str, str]]) -> None:
    loop = asyncio.get_running_loop()
    for port, cert, key in listeners:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ctx.num_tickets = 1
        await loop.create_server(FixedResponse, "127.0.0.1", port, ssl=ctx, backlog=1024, reuse_port=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("listeners", nargs="+", metavar="PORT:CERT:KEY")
    a = p.parse_args()
    listeners = [(int(port), cert, key) for port, cert, key in (x.split(":", 2) for x in a.listeners)]
    for _ in range(a.workers - 1):
        if os.fork() == 0:
            break
    uvloop.run(serve(listeners))


if __name__ == "__main__":
    main()
