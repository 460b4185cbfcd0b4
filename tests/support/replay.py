"""Scripted backends that read whole requests, and a client for replay tests (retries, redirects)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable

from tests.support import ScriptedBackend, read_all, status_codes

Handler = Callable[[socket.socket, ScriptedBackend], None]  # what a ScriptedBackend runs per connection


def read_request(conn: socket.socket, backend: ScriptedBackend) -> bytes | None:
    """One whole request, head and body (Content-Length or chunked); None when the peer closed."""
    data = backend.read_head(conn)
    if data is None:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    chunked = re.search(rb"(?im)^transfer-encoding:.*chunked", head) is not None

    def complete() -> bool:
        if length is not None:
            return len(body) >= int(length[1])
        return not chunked or body.endswith(b"0\r\n\r\n")

    while not complete():
        piece = conn.recv(65536)
        if not piece:
            return None
        body += piece
    return head + b"\r\n\r\n" + body


def on_new_connections(handler: Handler) -> Handler:
    """Wrap a handler so it drops the warm connection the proxy opens at start.

    A request that finds no IDLE connection waits for a new one, and a body that arrives
    meanwhile is buffered, which makes the request replayable (a body streamed to a
    backend is not).
    """
    def wrapped(conn: socket.socket, backend: ScriptedBackend) -> None:
        if backend.connections > 1:
            handler(conn, backend)
    return wrapped


def put(port: int, path: str, body: bytes, chunked: bool, pause: float = 0.0,
        method: str = "PUT") -> tuple[int, bytes, bytes]:
    """Send a PUT (or another `method` with a body); return the status, head and body of the response.

    With no pause the head and body go in one write, so the body is in before any new
    backend connection is ready: it is buffered. A pause after the head lets the request
    take a connection first: its body is streamed.
    """
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n\r\n"
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:5], body[5:])) + b"0\r\n\r\n"
    else:
        framing, payload = b"Content-Length: %d\r\n\r\n" % len(body), body
    head = b"%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s" % (method.encode(), path.encode(), framing)
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        if pause:
            sock.sendall(head)
            time.sleep(pause)
            sock.sendall(payload)
        else:
            sock.sendall(head + payload)
        raw = read_all(sock, 5)
    response_head, _, response_body = raw.partition(b"\r\n\r\n")
    return status_codes(response_head)[0], response_head, response_body


REPLAY_BODY = b"the-body-" + bytes(range(48, 58)) * 3
