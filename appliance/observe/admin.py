"""The admin listener: a tiny non-blocking HTTP/1.0 server run by the supervisor's own loop.

Not a thread (fork-unsafe) and not another process to supervise: the
supervisor already waits in select(); the admin sockets join that select and
each wake-up does a bounded amount of work (accept, one recv, one send per
socket). A client that stalls costs one socket until ADMIN_TIMEOUT, never a
blocked loop, so reloads and signals are not delayed by scrapes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable

from appliance.config.schema import AdminConfig
from appliance.routing.trust import TrustedProxies

log = logging.getLogger("rproxyd.admin")

ADMIN_TIMEOUT = 5.0  # seconds a client has to send its request and read the answer
MAX_REQUEST = 8192
MAX_CLIENTS = 64

# path → (status, content type, body)
Handler = Callable[[str], tuple[int, str, bytes]]

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 503: "Service Unavailable"}


def response(status: int, content_type: str, body: bytes, head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head if head_only else head + body


def _text(status: int, message: str) -> bytes:
    return response(status, "text/plain; charset=utf-8", message.encode() + b"\n")


_FORBIDDEN = _text(403, "forbidden: this address may not use the admin endpoints")


def unmapped(host: str) -> str:
    """A peer address as `allow` sees it: an IPv4 client of a dual-stack socket, which the
    kernel reports as ::ffff:a.b.c.d, by its IPv4 address (so 127.0.0.0/8 admits it)."""
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return str(mapped) if mapped is not None else host


class _Client:
    __slots__ = ("allowed", "deadline", "inbox", "outbox", "sock")

    def __init__(self, sock: socket.socket, deadline: float, allowed: bool) -> None:
        self.sock = sock
        self.deadline = deadline
        self.allowed = allowed
        self.inbox = b""
        self.outbox = b""


class AdminServer:
    """Accepts, reads one request, answers, closes: driven by `serve()` after each select()."""

    def __init__(self, config: AdminConfig, handler: Handler) -> None:
        self.config = config
        self._handler = handler
        self._allow = TrustedProxies(config.allow)
        family = socket.AF_INET6 if ":" in config.bind.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Dual stack whatever net.ipv6.bindv6only says: the admin listener has one
                # address, so "[::]:port" serves IPv4 scrapers too (unlike [[listener]]
                # sockets, which are IPv6-only because IPv4 gets a listener of its own).
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._sock.bind((config.bind.host, config.bind.port))
            self._sock.listen(64)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._clients: dict[int, _Client] = {}

    @property
    def address(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def fds(self) -> tuple[list[int], list[int]]:
        """(fds to watch for reading, fds to watch for writing)."""
        readers = [self._sock.fileno()]
        writers = []
        for fd, client in self._clients.items():
            (writers if client.outbox else readers).append(fd)
        return readers, writers

    def all_fds(self) -> set[int]:
        """Every fd this server holds, so forked workers can close their copies."""
        return {self._sock.fileno(), *self._clients}

    def serve(self, readable: list[int], writable: list[int]) -> None:
        now = time.monotonic()
        if self._sock.fileno() in readable:
            self._accept(now)
        for fd in [fd for fd in readable if fd in self._clients]:
            self._read(self._clients[fd])
        for fd in [fd for fd in writable if fd in self._clients]:
            self._write(self._clients[fd])
        for client in [c for c in self._clients.values() if now > c.deadline]:
            self._drop(client)

    def _accept(self, now: float) -> None:
        for _ in range(MAX_CLIENTS):
            try:
                sock, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("admin accept: %s", exc)
                return
            if len(self._clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            # A refused client is answered once its request is read, like any other: closing
            # with its request unread would reset the connection and lose the 403.
            allowed = unmapped(peer[0]) in self._allow
            self._clients[sock.fileno()] = _Client(sock, now + ADMIN_TIMEOUT, allowed)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.inbox += data
        if b"\r\n\r\n" not in client.inbox and b"\n\n" not in client.inbox:
            if len(client.inbox) > MAX_REQUEST:
                client.outbox = _text(400, "request head too large")
                self._write(client)
            return
        client.outbox = self._answer(client.inbox) if client.allowed else _FORBIDDEN
        self._write(client)

    def _answer(self, request: bytes) -> bytes:
        parts = request.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _text(400, "bad request")
        method, target = parts[0], parts[1].decode("latin-1").split("?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _text(405, "only GET and HEAD")
        try:
            status, content_type, body = self._handler(target)
        except Exception:
            # The supervisor must survive a bug in a status page.
            log.exception("admin %s failed", target)
            return _text(503, "internal error")
        return response(status, content_type, body, head_only=method == b"HEAD")

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        with contextlib.suppress(OSError):
            client.sock.close()

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        self._sock.close()
