"""Listening sockets: one SO_REUSEPORT socket per listener per worker slot."""

from __future__ import annotations

import socket

from appliance.config.schema import ListenerConfig


def open_listener(listener: ListenerConfig, exclusive: bool = False, listen: bool = True) -> socket.socket:
    """Bind (and listen on) a non-blocking SO_REUSEPORT socket for one worker slot.

    Each worker slot gets its own socket so the kernel spreads connections across
    per-worker accept queues instead of waking every worker for each one.
    `exclusive` (for a listener's first socket) refuses an address that another
    process already listens on: SO_REUSEPORT would otherwise let a second rproxyd
    silently share the port with the first. Without `listen` the socket is only bound:
    the kernel routes no connection to it until someone calls listen() (the worker that
    serves it, see appliance.process.sockets).
    """
    host = listener.bind.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if exclusive and listener.bind.port:
        try:
            _check_unused(family, host, listener.bind.port)
        except OSError as exc:
            raise OSError(exc.errno, f"listener {listener.name}: cannot bind {listener.bind}: "
                          f"{exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, listener.bind.port))
        if listen:
            sock.listen(listener.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _check_unused(family: socket.AddressFamily, host: str, port: int) -> None:
    # A bind without SO_REUSEPORT fails with EADDRINUSE while any socket listens there.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))
