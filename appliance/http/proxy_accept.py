"""Listeners with `proxy_protocol = true`: each connection's PROXY header is read before HTTP or TLS.

uvloop reads a connection as soon as it accepts it, and a TLS transport hands every byte
it reads to OpenSSL, so the header has to come off the socket before uvloop sees it. Such
a listener is not a uvloop server: `ProxyAcceptor` accepts on the listening socket, refuses
peers outside trusted_proxies at once, and reads each header with a peek and then a recv
of exactly the header's bytes (the first bytes of the client's request or ClientHello stay
in the socket). Then `loop.connect_accepted_socket` makes the socket a uvloop transport,
plain or TLS, and the client connection takes the header's client address as its peer.
Listeners without proxy_protocol stay uvloop servers and never look for a header.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.http.proxy_protocol import MAX_HEADER, Address, ProxyHeader, ProxyHeaderError, parse
from appliance.observe import metrics

if TYPE_CHECKING:
    from appliance.observe.observer import Observer
    from appliance.observe.sampled import SampledLog
    from appliance.routing.trust import TrustedProxies

log = logging.getLogger("rproxyd.client")

ACCEPT_BATCH = 64  # connections accepted per readiness callback, so one listener cannot starve the loop

ProtocolFactory = Callable[[], Any]


class ProxyAcceptor:
    """Accepts on one listening socket of a proxy_protocol listener; the loop's own server for it."""

    __slots__ = ("_closed", "_handshakes", "_make_factory", "_pending", "_refusals", "_settled", "_sock",
                 "_ssl", "_trusted", "header_timeout", "loop", "observer")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 make_factory: Callable[[Address | None], ProtocolFactory], tls: ssl.SSLContext | None,
                 header_timeout: float, trusted: TrustedProxies, observer: Observer,
                 refusals: SampledLog) -> None:
        self.loop = loop
        self._sock = sock
        # The protocol factory for a connection whose header sent this client address (None:
        # LOCAL or UNKNOWN, the real peer is the client).
        self._make_factory = make_factory
        self._ssl = tls
        self.header_timeout = header_timeout  # also each _HeaderReader's bound
        self._trusted = trusted
        self._refusals = refusals
        self.observer = observer
        self._pending: set[_HeaderReader] = set()
        # Connections handed over whose TLS handshake is still running (connect_accepted_socket
        # ends when it does): like the headers being read, accepted but not yet clients.
        self._handshakes: set[asyncio.Task] = set()
        self._settled: asyncio.Future | None = None  # wait_closed's, made when it must wait
        self._closed = False

    def start(self) -> None:
        self._sock.setblocking(False)
        self.loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting, as Server.close does. Connections already accepted go on: their
        header and handshake are bounded by header_timeout, and a draining worker waits for
        them (`wait_closed`) as for a uvloop server's."""
        self.loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._closed = True
        self._settle()

    async def wait_closed(self) -> None:
        """Until this acceptor is closed and every connection it accepted is a client
        connection or gone: what asyncio.Server.wait_closed tells a draining worker about
        connections it cannot see yet (after the hand-over, it sees the client connection)."""
        if not self._closed or self._pending or self._handshakes:
            if self._settled is None:
                self._settled = self.loop.create_future()
            await self._settled

    def abort(self) -> None:
        """Drop connections still inside their header (the worker stops)."""
        for reader in list(self._pending):
            reader.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: try again on the next readiness
                log.error("accept on %s: %s", self._sock.getsockname(), exc.strerror)
                return
            address = peer[0] if peer else ""
            if address not in self._trusted:
                conn.close()
                self.refuse(metrics.PP_UNTRUSTED, address, "not in trusted_proxies")
                continue
            self._pending.add(_HeaderReader(self, conn, address))

    def refuse(self, reason: int, address: str, why: str) -> None:
        self.observer.proxy_header_refused(reason)
        self._refusals.log("PROXY protocol listener: connection from %s closed: %s", address, why)

    def hand_over(self, reader: _HeaderReader, header: ProxyHeader) -> None:
        """The header is read: the socket becomes the client connection's transport."""
        self._pending.discard(reader)
        factory = self._make_factory(header.source)
        loop = self.loop
        task = loop.create_task(loop.connect_accepted_socket(
            factory, reader.sock, ssl=self._ssl,
            ssl_handshake_timeout=self.header_timeout if self._ssl is not None else None))
        self._handshakes.add(task)
        task.add_done_callback(self._handed_over)

    def _handed_over(self, task: asyncio.Task) -> None:
        self._handshakes.discard(task)
        # A failed TLS handshake ends here, as it does silently on a uvloop TLS server.
        if not task.cancelled() and task.exception() is not None:
            log.debug("PROXY protocol listener: connection failed after its header: %s", task.exception())
        self._settle()

    def forget(self, reader: _HeaderReader) -> None:
        self._pending.discard(reader)
        self._settle()

    def _settle(self) -> None:
        if (self._settled is not None and self._closed and not self._pending and not self._handshakes
                and not self._settled.done()):
            self._settled.set_result(None)


class _HeaderReader:
    """One accepted connection until its PROXY header is whole."""

    __slots__ = ("acceptor", "address", "received", "sock", "timer")

    def __init__(self, acceptor: ProxyAcceptor, sock: socket.socket, address: str) -> None:
        self.acceptor = acceptor
        self.sock = sock
        self.address = address
        self.received = b""  # header bytes consumed so far
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = acceptor.loop
        self.timer = loop.call_later(acceptor.header_timeout, self._expired)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        try:
            # Peeked, not read: bytes past the header are the client's and must stay in the socket.
            chunk = sock.recv(MAX_HEADER - len(self.received), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._refuse(metrics.PP_TRUNCATED, f"inside the PROXY header: {exc.strerror}")
            return
        if not chunk:
            self._refuse(metrics.PP_TRUNCATED, "the peer closed inside the PROXY header")
            return
        data = self.received + chunk
        try:
            result = parse(data)
        except ProxyHeaderError as exc:
            self._refuse(metrics.PP_INVALID, str(exc))
            return
        if isinstance(result, int):
            # Every byte so far belongs to the header (parse's promise): take them out of the
            # socket, so it is readable again only when more arrive (a peek alone would spin).
            sock.recv(len(chunk))
            self.received = data
            return
        sock.recv(result.length - len(self.received))
        self._stop()
        self.acceptor.hand_over(self, result)

    def _expired(self) -> None:
        self._refuse(metrics.PP_TIMEOUT, "no complete PROXY header within header_timeout")

    def _refuse(self, reason: int, why: str) -> None:
        self.close()
        self.acceptor.refuse(reason, self.address, why)

    def _stop(self) -> None:
        self.timer.cancel()
        self.acceptor.loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self._stop()
        self.acceptor.forget(self)
        self.sock.close()
