"""How a client connection's last response leaves, on a real uvloop loop (in-process worker)."""

from __future__ import annotations

import asyncio
import socket
import threading
from socket import IPPROTO_TCP, TCP_CORK

from appliance.http.downstream import ClientConnection, ClientListener
from tests.support import ScriptedBackend, running
from tests.test_timer_units import _context, _worker, run, until

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"


def test_a_closing_response_is_not_held_corked_past_the_backend_read_that_brought_it(tmp_path) -> None:
    """The last response of a connection (the client sent `Connection: close`) is written
    corked, so that the close's FIN leaves with its last bytes (issue 15, the new-connection
    cost); when the backend read ends before the response does, the socket is uncorked at
    once, so what that read brought is not held for the kernel's cork timer. The rest and
    the close still arrive."""
    rest = threading.Event()

    def halves(conn: socket.socket, backend: ScriptedBackend) -> None:
        if backend.read_head(conn) is not None:
            conn.sendall(HEAD + b"first")
            rest.wait(10)
            conn.sendall(b"-rest")
            backend.read_head(conn)  # until the proxy closes or gives the connection up

    with running(backend := ScriptedBackend(halves)):
        worker = _worker(tmp_path, backend)

        async def main() -> None:
            ctx = _context(worker)
            listener = ClientListener(ctx)
            server = await ctx.loop.create_server(lambda: ClientConnection(listener), "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
            assert await reader.readexactly(5) == b"first"
            (client,) = ctx.clients
            assert not client.corked
            assert client.transport.get_extra_info("socket").getsockopt(IPPROTO_TCP, TCP_CORK) == 0
            rest.set()
            assert await reader.readexactly(5) == b"-rest"
            assert await reader.read() == b""  # then the close
            await until(lambda: not ctx.clients, "the connection to close")
            writer.close()
            server.close()

        run(main)
