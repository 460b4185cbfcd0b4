"""The supervisor's listening sockets, kept open across reloads and upgrades.

Each listener has one SO_REUSEPORT socket per worker slot, hence one accept
queue per slot. The supervisor holds every socket for as long as the listener
exists, so a worker exiting (drained, crashed or killed) never destroys a queue:
the connections queued on it wait for the slot's next worker. Sockets are only
ever closed when a listener is removed from the configuration.

When the worker count shrinks, the surplus sockets are not closed (that would
drop their queues); slot j of n serves every socket k with k % n == j.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from appliance.config.schema import ListenerConfig
from appliance.config.values import Address
from appliance.listeners import open_listener

# Listeners are identified by address, so a renamed listener keeps its sockets; port 0
# ("any port") can appear more than once, so there the name tells them apart.
ListenerKey = tuple[Address, str]


def listener_key(listener: ListenerConfig) -> ListenerKey:
    return (listener.bind, listener.name if listener.bind.port == 0 else "")


@dataclass(slots=True, eq=False)
class ListenerSockets:
    """Every slot socket of one listener, all bound to the same address."""

    bind: Address  # as configured; port 0 means "any", resolved by the first socket
    port: int  # the port actually bound
    backlog: int
    sockets: list[socket.socket] = field(default_factory=list)

    def grow(self, listener: ListenerConfig, count: int) -> None:
        while len(self.sockets) < count:
            # Every further socket joins the reuseport group of the first one's port.
            resolved = ListenerConfig(name=listener.name, bind=Address(self.bind.host, self.port),
                                      backlog=listener.backlog)
            sock = open_listener(resolved if self.sockets else listener, exclusive=not self.sockets)
            self.port = sock.getsockname()[1]
            self.sockets.append(sock)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


class ListenerSet:
    """Listening sockets by configured address, shared by every generation."""

    def __init__(self) -> None:
        self.by_key: dict[ListenerKey, ListenerSockets] = {}

    def prepare(self, listeners: list[ListenerConfig], slots: int) -> list[ListenerKey]:
        """Open what a generation with these listeners and slots needs; return what was new.

        On failure, whatever this call opened is closed again and OSError propagates,
        so a reload that cannot bind leaves the running generation untouched.
        """
        opened: list[ListenerKey] = []
        try:
            for listener in listeners:
                key = listener_key(listener)
                entry = self.by_key.get(key)
                if entry is None:
                    entry = ListenerSockets(listener.bind, listener.bind.port, listener.backlog)
                    self.by_key[key] = entry
                    opened.append(key)
                entry.grow(listener, slots)
        except OSError:
            self.close(opened)
            raise
        return opened

    def apply_backlog(self, listeners: list[ListenerConfig]) -> None:
        """listen() again with a changed backlog: the queue and its connections stay."""
        for listener in listeners:
            entry = self.by_key[listener_key(listener)]
            if entry.backlog != listener.backlog:
                for sock in entry.sockets:
                    sock.listen(listener.backlog)
                entry.backlog = listener.backlog

    def close(self, keys: list[ListenerKey]) -> None:
        for key in keys:
            entry = self.by_key.pop(key, None)
            if entry is not None:
                entry.close()

    def unused(self, listeners: list[ListenerConfig]) -> list[ListenerKey]:
        wanted = {listener_key(listener) for listener in listeners}
        return [key for key in self.by_key if key not in wanted]

    def for_slot(self, listeners: list[ListenerConfig], slot: int, slots: int
                 ) -> dict[str, list[socket.socket]]:
        """The sockets worker `slot` of `slots` accepts on, by listener name."""
        return {
            listener.name: [sock for k, sock in enumerate(self.by_key[listener_key(listener)].sockets)
                            if k % slots == slot]
            for listener in listeners
        }

    def all_fds(self) -> set[int]:
        return {sock.fileno() for entry in self.by_key.values() for sock in entry.sockets}

    def addresses(self, listeners: list[ListenerConfig]) -> dict[str, str]:
        """Listener name → the address actually bound (port 0 resolved)."""
        return {
            lc.name: str(Address(lc.bind.host, self.by_key[listener_key(lc)].port)) for lc in listeners
        }

    # ------------------------------------------------------------ upgrade
    def export(self) -> list[dict[str, object]]:
        """Describe the sockets for the next image and let their fds survive exec."""
        out: list[dict[str, object]] = []
        for (bind, name), entry in self.by_key.items():
            for sock in entry.sockets:
                os.set_inheritable(sock.fileno(), True)
            out.append({"host": bind.host, "port": bind.port, "name": name, "bound_port": entry.port,
                        "backlog": entry.backlog, "fds": [s.fileno() for s in entry.sockets]})
        return out

    @classmethod
    def adopt(cls, described: list[dict[str, object]]) -> ListenerSet:
        listeners = cls()
        for item in described:
            bind = Address(str(item["host"]), int(item["port"]))  # type: ignore[call-overload]
            entry = ListenerSockets(bind, int(item["bound_port"]), int(item["backlog"]))  # type: ignore[call-overload]
            for fd in item["fds"]:  # type: ignore[attr-defined]
                sock = socket.socket(fileno=fd)
                sock.set_inheritable(False)
                entry.sockets.append(sock)
            listeners.by_key[(bind, str(item["name"]))] = entry
        return listeners
