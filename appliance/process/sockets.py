"""The supervisor's listening sockets, kept open across reloads and upgrades.

Each listener has one SO_REUSEPORT socket per worker slot, hence one accept
queue per slot. The supervisor holds every socket for as long as the listener
exists, so a worker exiting (drained, crashed or killed) never destroys a queue:
the connections queued on it wait for the slot's next worker. Sockets are closed
when a listener is removed from the configuration, and when the rollout that
opened them fails (see "Staged sockets").

When the worker count shrinks, the surplus sockets are not closed (that would
drop their queues); slot j of n serves every socket k with k % n == j.

Staged sockets. A reload opens what its generation needs before any worker
forks: the sockets of added listeners and, when `workers` grows, more slot
sockets for existing listeners. Until the generation commits they are staged:
only the pending generation's workers get them, and a failed rollout closes
them all again, so the reuseport groups end up as they were before the reload.

Only a listener's first socket listens as soon as it is opened: that claims the
address (see `open_listener`'s `exclusive`); connections to a new listener wait
there for the new workers, as at a cold start. Every further slot socket is bound
(so a bind error still fails the reload before anything forks) but listens only
when the worker of its slot starts accepting on it: the kernel adds a socket to
the reuseport group, and routes connections to it, from its listen(). Listening
at once would put a share of live traffic in queues that no process accepts from
until the new workers boot, and for good if they never do. Operators used to
nginx or HAProxy expect a failed reload to leave the service exactly as it was,
and a reload never to delay connections to an address that is already served.
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
    backlog: int  # the serving generation's; a pending one's applies at commit
    sockets: list[socket.socket] = field(default_factory=list)
    # sockets[:committed] belong to the serving generation; the rest are staged.
    committed: int = 0

    def grow(self, listener: ListenerConfig, count: int) -> None:
        while len(self.sockets) < count:
            first = not self.sockets
            # Every further socket joins the reuseport group of the first one's port.
            resolved = ListenerConfig(name=listener.name, bind=Address(self.bind.host, self.port),
                                      backlog=listener.backlog)
            sock = open_listener(listener if first else resolved, exclusive=first, listen=first)
            self.port = sock.getsockname()[1]
            self.sockets.append(sock)

    def commit(self, backlog: int) -> None:
        if backlog != self.backlog:
            # listen() again with the changed backlog: the queue and its connections stay.
            for sock in self.sockets:
                sock.listen(backlog)
            self.backlog = backlog
        self.committed = len(self.sockets)

    def rollback(self) -> None:
        """Close the staged sockets and give the committed ones their backlog back."""
        for sock in self.sockets[self.committed:]:
            sock.close()
        del self.sockets[self.committed:]
        # The failed generation's workers listen()ed with their configuration's backlog
        # on the committed sockets too. Every committed socket listens already: a reload
        # starts only once each slot of the serving generation has accepted.
        for sock in self.sockets:
            sock.listen(self.backlog)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        self.committed = 0


class ListenerSet:
    """Listening sockets by configured address, shared by every generation."""

    def __init__(self) -> None:
        self.by_key: dict[ListenerKey, ListenerSockets] = {}

    def prepare(self, listeners: list[ListenerConfig], slots: int) -> None:
        """Stage what a generation with these listeners and slots needs and does not have.

        On failure everything staged is closed again and OSError propagates, so a
        reload that cannot bind leaves the running generation untouched.
        """
        try:
            for listener in listeners:
                key = listener_key(listener)
                entry = self.by_key.get(key)
                if entry is None:
                    entry = ListenerSockets(listener.bind, listener.bind.port, listener.backlog)
                    self.by_key[key] = entry
                entry.grow(listener, slots)
        except OSError:
            self.rollback()
            raise

    def commit(self, listeners: list[ListenerConfig]) -> None:
        """The generation that staged sockets serves: they are its, and removed listeners close."""
        for listener in listeners:
            self.by_key[listener_key(listener)].commit(listener.backlog)
        wanted = {listener_key(listener) for listener in listeners}
        self._close([key for key in self.by_key if key not in wanted])

    def rollback(self) -> None:
        """The generation that staged sockets will not serve: close every one of them."""
        for entry in self.by_key.values():
            entry.rollback()
        self._close([key for key, entry in self.by_key.items() if not entry.sockets])

    def close_all(self) -> None:
        self._close(list(self.by_key))

    def _close(self, keys: list[ListenerKey]) -> None:
        for key in keys:
            self.by_key.pop(key).close()

    def for_slot(self, listeners: list[ListenerConfig], slot: int, slots: int, staged: bool = False
                 ) -> dict[str, list[socket.socket]]:
        """The sockets worker `slot` of `slots` accepts on, by listener name.

        `staged` is for the pending generation's workers: only they serve staged sockets.
        """
        out: dict[str, list[socket.socket]] = {}
        for listener in listeners:
            entry = self.by_key[listener_key(listener)]
            usable = entry.sockets if staged else entry.sockets[:entry.committed]
            out[listener.name] = [sock for k, sock in enumerate(usable) if k % slots == slot]
        return out

    def all_fds(self) -> set[int]:
        return {sock.fileno() for entry in self.by_key.values() for sock in entry.sockets}

    def addresses(self, listeners: list[ListenerConfig]) -> dict[str, str]:
        """Listener name → the address actually bound (port 0 resolved)."""
        return {
            lc.name: str(Address(lc.bind.host, self.by_key[listener_key(lc)].port)) for lc in listeners
        }

    # ------------------------------------------------------------ upgrade
    def export(self) -> list[dict[str, object]]:
        """Describe the sockets for the next image and let their fds survive exec.

        Only between rollouts (an upgrade starts in RUNNING), so every socket is committed.
        """
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
            entry.committed = len(entry.sockets)
            listeners.by_key[(bind, str(item["name"]))] = entry
        return listeners
