"""The worker's timers (the wheel, its deadlines, the pending queues) on a real uvloop loop."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import types
import weakref
from collections import Counter

import uvloop

from appliance.config.loader import load
from appliance.deadline import Deadline
from appliance.http.downstream import ClientConnection, ClientListener, ClientState
from appliance.http.exchange import ExchangeState
from appliance.http.idle import IdleClient
from appliance.timerwheel import BATCH, UNFILED
from appliance.upstream.pool import PendingQueue
from appliance.worker import Worker
from tests.support import proxy_config


class Owner:
    """Stands in for a connection: owns a deadline whose expiry calls back into it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fired: dict[int, float], key: int) -> None:
        self.loop, self.fired, self.key = loop, fired, key
        self.deadline = Deadline(loop, self.expired)

    def expired(self) -> None:
        self.fired[self.key] = self.loop.time()


def run(main) -> None:
    uvloop.run(main())


async def until(predicate, what: str, seconds: float = 5.0) -> None:
    """Let the loop run until `predicate()` holds (a bound, not a measurement)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while not predicate():
        assert loop.time() < give_up, f"still waiting for {what}"
        await asyncio.sleep(0.01)


class Turns:
    """Counts loop turns (a callback queued for every turn, as ready I/O would be) and what
    a callback recorded in each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.turn = 0
        self.stopped = False
        self.by_turn: Counter[int] = Counter()
        loop.call_soon(self._next)

    def _next(self) -> None:
        self.turn += 1
        if not self.stopped:
            self.loop.call_soon(self._next)

    def record(self, *_: object) -> None:
        self.by_turn.update((self.turn,))

    async def bounded(self, total: int, what: str) -> None:
        """Wait for `total` records, then check no turn had more than BATCH of them."""
        await until(lambda: sum(self.by_turn.values()) == total, what)
        self.stopped = True
        assert max(self.by_turn.values()) <= BATCH
        assert len(self.by_turn) >= total // BATCH


def test_deadlines_fire_once_never_early_and_follow_moves_and_cancels() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: dict[int, float] = {}
        owners = [Owner(loop, fired, key) for key in range(400)]
        due: dict[int, float] = {}
        for key, owner in enumerate(owners):
            owner.deadline.set(0.01 * (key % 30))
            due[key] = loop.time() + 0.01 * (key % 30)
        for key in range(0, 400, 4):  # later: the entry stays in its slot and is refiled from there
            owners[key].deadline.set(0.35)
            due[key] = loop.time() + 0.35
        for key in range(1, 400, 4):  # earlier: refiled at once
            owners[key].deadline.set(0.001)
            due[key] = loop.time() + 0.001
        for key in range(2, 400, 8):
            owners[key].deadline.cancel()
            del due[key]
        for key in range(6, 400, 8):
            owners[key].deadline.clear()
            del due[key]
        await asyncio.sleep(0.6)
        assert set(fired) == set(due)
        assert all(fired[key] >= due[key] for key in due)

    run(main)


def test_a_burst_expires_in_bounded_batches_per_loop_turn() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        turns = Turns(loop)
        deadlines = [Deadline(loop, turns.record) for _ in range(1000)]
        for deadline in deadlines:
            deadline.set(0.05)
        await turns.bounded(1000, "every deadline to expire")

    run(main)


def test_a_cancelled_deadline_does_not_keep_its_owner_alive() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        owner = Owner(loop, {}, 0)
        owner.deadline.set(75)
        owner.deadline.set(80)  # moved later: still one entry
        gone = weakref.ref(owner)
        owner.deadline.cancel()
        del owner
        gc.collect()
        assert gone() is None

    run(main)


def test_a_failing_expiry_does_not_stop_the_others() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        fired: list[int] = []

        def expire(key: int) -> None:
            fired.append(key)
            if key % 10 == 0:
                raise RuntimeError("broken callback")

        deadlines = [Deadline(loop, lambda key=key: expire(key)) for key in range(100)]
        for deadline in deadlines:
            deadline.set(0.01)
        await until(lambda: len(fired) == 100, "every deadline to expire")
        assert len(errors) == 10

    run(main)


def test_a_pending_queue_expires_in_bounded_batches_per_loop_turn() -> None:
    """A hung backend's whole queue times out together: it is answered BATCH per loop turn."""
    class Waiting:  # the two fields of an Exchange a PendingQueue reads
        state = ExchangeState.PENDING
        pending_since = 0.0

    async def main() -> None:
        turns = Turns(asyncio.get_running_loop())
        queue = PendingQueue(turns.loop, 0.05, turns.record)
        for _ in range(1000):
            queue.push(Waiting())
        await turns.bounded(1000, "every queued request to expire")
        assert not queue.entries

    run(main)


def _worker(tmp_path, origin) -> Worker:
    """A worker for an origin, not started: the tests below build its context on their own loop."""
    config_file = tmp_path / "rproxyd.toml"
    config_file.write_text(proxy_config(0, {"app": [origin.address]}))
    return Worker(load(config_file), {})


def _context(worker: Worker):
    """The worker's context on the running loop, with its metrics recorder."""
    ctx = worker.build_context(asyncio.get_running_loop())
    ctx.observer = worker.build_recorder(ctx)
    return ctx


def test_an_idle_client_connection_holds_no_timer_object_and_no_queue(tmp_path, origin) -> None:
    """An idle keep-alive client connection files itself in the wheel for its keep-alive
    timeout, with no Deadline object, no bound method and no exchange list of its own
    (issue 15, RSS per idle connection); closing it takes it out of the wheel again."""
    worker = _worker(tmp_path, origin)

    async def main() -> None:
        ctx = _context(worker)
        loop = ctx.loop
        ctx.compact_after = ctx.keepalive_timeout  # never compacted: the idle ClientConnection is the subject
        server = await loop.create_server(lambda: ClientConnection(ClientListener(ctx)), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        await until(lambda: ctx.clients and next(iter(ctx.clients)).state is ClientState.IDLE,
                    "the connection to go idle")
        (client,) = ctx.clients
        held = gc.get_referents(client)
        assert not [o for o in held if isinstance(o, (Deadline, types.MethodType, list))], held
        assert client.when is not None and client in ctx.wheel._slots[client.slot]
        writer.close()
        await until(lambda: not ctx.clients, "the connection to close")
        assert client.slot == UNFILED and not any(client in s for s in ctx.wheel._slots.values())
        server.close()

    run(main)


def test_a_compacted_idle_connection_is_in_no_set_and_no_wheel_slot(tmp_path, origin) -> None:
    """Idle past `compact_after`, a keep-alive connection is an IdleClient in the worker's idle
    queue only: no ClientConnection, no `ctx.clients` member, no wheel entry of its own (the
    queue has one for all) and no uvloop transport; its next request makes a ClientConnection
    again (issue 15, idle RSS)."""
    worker = _worker(tmp_path, origin)

    async def main() -> None:
        ctx = _context(worker)
        loop = ctx.loop
        server = await loop.create_server(lambda: ClientConnection(ClientListener(ctx)), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            await until(lambda: not ctx.clients and len(ctx.idle) == 1, "the idle connection compacted")
            idle = ctx.idle.head
            # A plain connection's socket left uvloop: it waits in the idle epoll set, by fd.
            assert isinstance(idle, IdleClient) and idle.transport is None and ctx.idle._fds[idle.fd] is idle
            assert not any(idle in entries for entries in ctx.wheel._slots.values())
            assert ctx.idle.when is not None  # the queue's one wheel entry, for its head
        writer.close()
        await until(lambda: not ctx.idle, "the closed idle connection gone from the queue")
        server.close()

    run(main)


def test_a_worker_out_of_fds_keeps_a_plain_idle_connections_transport(tmp_path, origin) -> None:
    """Detaching a plain idle connection from uvloop needs one more fd for a moment (its socket's
    duplicate): at the fd limit it stays compacted with its transport, as a TLS one does, and
    the compaction sweep goes on (the next idle spell, with fds to spare, detaches it)."""
    worker = _worker(tmp_path, origin)

    async def main() -> None:
        ctx = _context(worker)
        server = await ctx.loop.create_server(lambda: ClientConnection(ClientListener(ctx)), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])

        async def request_then_compacted() -> IdleClient:
            writer.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                          if line.lower().startswith(b"content-length:")))
            await until(lambda: not ctx.clients and len(ctx.idle) == 1, "the idle connection compacted")
            return ctx.idle.head

        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, limits[1]))  # no fd to spare
        try:
            kept = await request_then_compacted()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        assert kept.transport is not None and kept.transport.get_protocol() is kept and kept.fd == -1
        detached = await request_then_compacted()
        assert detached.transport is None and ctx.idle._fds[detached.fd] is detached
        writer.close()
        await until(lambda: not ctx.idle, "the closed idle connection gone from the queue")
        server.close()

    run(main)
