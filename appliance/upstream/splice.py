"""Zero-copy bodies: splice(2) from one socket to another, in either direction.

A plaintext Content-Length body is relayed through a kernel pipe: splice moves the
socket buffers' pages into the pipe and on to the other socket, so the body never
becomes Python bytes and never crosses into user space. That is what takes large
bodies past the cost of reading and writing them (HAProxy's `option splice-response`
and `splice-request` do the same). Responses go backend → client (the backend
connection owns the splice), request bodies client → backend (the client connection
does). The head, and any body bytes read with it, still go the usual way; the owner
starts the splice only once the destination's transport has nothing buffered, so order
holds, and pauses the source's transport for as long as it runs.

While splicing, both transports stay open: this module watches duplicates of the two
sockets' descriptors (uvloop refuses a reader on a descriptor a transport owns), so a
transport closing its socket can never leave a watcher on a reused descriptor number.
It watches them in an epoll set of its own, one per event loop, which the loop watches as
one descriptor: registering a socket there is one epoll_ctl, where a reader of uvloop's
costs a new libuv poll handle every time (a probe ADD and DEL, an ioctl, the ADD, and
three DELs when it goes; about 5% of a 1 MiB response's CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

from appliance.statemachine import Transitions

_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
PIPE_BYTES = 1024 * 1024  # pipe capacity (pipe-max-size by default): bytes moved per pair of splice calls
_IDLE_PIPES = 64  # empty pipes a pool keeps: one per concurrent large body, reused
_BATCH = 64  # ready sockets taken per wake-up (level-triggered: the rest come at the next)


class PipePool:
    """Empty pipes kept per backend pool, so a body costs no pipe creation."""

    __slots__ = ("_idle", "capacity", "min_bytes")

    def __init__(self, min_bytes: int) -> None:
        self._idle: list[tuple[int, int]] = []
        self.capacity = PIPE_BYTES
        # Shorter bodies are not worth the extra system calls and the pipe.
        self.min_bytes = min_bytes

    def acquire(self) -> tuple[int, int]:
        if self._idle:
            return self._idle.pop()
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        size = 64 * 1024  # Linux's default pipe size
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep the default
            size = fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        # Every pipe of the pool must hold `capacity`: a body fills one up to it.
        self.capacity = min(self.capacity, size)
        return read_end, write_end

    def release(self, pipe: tuple[int, int], empty: bool) -> None:
        """Keep an empty pipe for reuse; one that still holds bytes is closed with them."""
        if empty and len(self._idle) < _IDLE_PIPES:
            self._idle.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])


class SpliceWatch:
    """The readiness of the splices' sockets: an epoll set the event loop watches as one descriptor."""

    __slots__ = ("_callbacks", "_epoll")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], None]] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)  # for the worker's life

    def watch(self, fd: int, events: int, callback: Callable[[], None]) -> None:
        """Call `callback` while `fd` is ready for `events` (level-triggered), instead of what it had."""
        if fd in self._callbacks:
            self._epoll.modify(fd, events)
        else:
            self._epoll.register(fd, events)
        self._callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        del self._callbacks[fd]
        self._epoll.unregister(fd)

    def _ready(self) -> None:
        for fd, _ in self._epoll.poll(0, _BATCH):
            # An earlier callback of this batch may have unwatched it (a stale event of a
            # descriptor number watched again calls a callback that tolerates EAGAIN).
            callback = self._callbacks.get(fd)
            if callback is not None:
                callback()


_WATCHES: dict[asyncio.AbstractEventLoop, SpliceWatch] = {}  # one per event loop, made at its first splice


def watch_of(loop: asyncio.AbstractEventLoop) -> SpliceWatch:
    watch = _WATCHES.get(loop)
    if watch is None:
        watch = _WATCHES[loop] = SpliceWatch(loop)
    return watch


class SpliceState(IntEnum):
    FILLING = 1  # waiting for the backend socket to be readable
    DRAINING = 2  # the pipe holds bytes the client socket could not take yet
    ENDED = 3


_MOVES = Transitions("splice", {
    SpliceState.FILLING: (SpliceState.DRAINING, SpliceState.ENDED),
    SpliceState.DRAINING: (SpliceState.FILLING, SpliceState.ENDED),
})


# How a splice ended, as its owner hears it.
SPLICE_DONE = 0  # the whole body went through
SPLICE_SOURCE_CLOSED = 1  # the source closed (or failed) before the end of the body
SPLICE_DESTINATION_GONE = 2  # the destination socket refused the bytes (reset, closed)


class SpliceOwner(Protocol):
    """What a splice reports to (the connection whose body it carries)."""

    def splice_read(self, size: int) -> None: ...
    def splice_written(self, size: int) -> None: ...
    def splice_waiting(self, for_destination: bool) -> None: ...
    def splice_ended(self, outcome: int) -> None: ...


class BodySplice:
    """Moves `remaining` body bytes from one socket to another, then reports how it ended.

    The owner pauses the source's transport before and resumes it after: the transport
    must not read what the splice moves.
    """

    __slots__ = ("_destination_fd", "_in_pipe", "_owner", "_pipe", "_pipes", "_source_fd", "_watch",
                 "remaining", "state")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pipes: PipePool,
        source: asyncio.Transport,
        destination: asyncio.Transport,
        remaining: int,
        owner: SpliceOwner,
    ) -> None:
        self._watch = watch_of(loop)
        self._pipes = pipes
        self.remaining = remaining
        self._owner = owner
        self._in_pipe = 0
        self._source_fd = os.dup(source.get_extra_info("socket").fileno())
        self._destination_fd = os.dup(destination.get_extra_info("socket").fileno())
        self._pipe = pipes.acquire()
        self.state = SpliceState.FILLING
        self._watch.watch(self._source_fd, select.EPOLLIN, self._fill)

    def _fill(self) -> None:
        """The source socket is readable: move what it has into the pipe, then on."""
        if self.state is not SpliceState.FILLING:
            return
        room = min(self.remaining, self._pipes.capacity - self._in_pipe)
        try:
            moved = os.splice(self._source_fd, self._pipe[1], room, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self._end(SPLICE_SOURCE_CLOSED)
            return
        if moved == 0:
            self._end(SPLICE_SOURCE_CLOSED)
            return
        self.remaining -= moved
        self._in_pipe += moved
        self._owner.splice_read(moved)
        self._drain()

    def _drain(self) -> None:
        """Move the pipe's bytes to the destination; wait for it to be writable if full."""
        while self._in_pipe:
            try:
                moved = os.splice(self._pipe[0], self._destination_fd, self._in_pipe, flags=_FLAGS)
            except BlockingIOError:
                if self.state is SpliceState.FILLING:
                    self._transition(SpliceState.DRAINING)
                    self._watch.unwatch(self._source_fd)
                    self._watch.watch(self._destination_fd, select.EPOLLOUT, self._drain)
                    self._owner.splice_waiting(for_destination=True)
                return
            except OSError:  # EPIPE, ECONNRESET: the destination is gone
                self._end(SPLICE_DESTINATION_GONE)
                return
            self._in_pipe -= moved
            self._owner.splice_written(moved)
        if not self.remaining:
            self._end(SPLICE_DONE)
        elif self.state is SpliceState.DRAINING:
            self._transition(SpliceState.FILLING)
            self._watch.unwatch(self._destination_fd)
            self._watch.watch(self._source_fd, select.EPOLLIN, self._fill)
            self._owner.splice_waiting(for_destination=False)

    def _transition(self, new: SpliceState) -> None:
        self.state = _MOVES.check(self.state, new)

    def cancel(self) -> None:
        """Stop without reporting (the owner is closing the connection anyway)."""
        if self.state is not SpliceState.ENDED:
            self._release()

    def _end(self, outcome: int) -> None:
        self._release()
        self._owner.splice_ended(outcome)

    def _release(self) -> None:
        if self.state is SpliceState.FILLING:
            self._watch.unwatch(self._source_fd)
        elif self.state is SpliceState.DRAINING:
            self._watch.unwatch(self._destination_fd)
        self._transition(SpliceState.ENDED)
        os.close(self._source_fd)
        os.close(self._destination_fd)
        self._pipes.release(self._pipe, empty=self._in_pipe == 0)


class SpliceHolder:
    """The base of a connection that may run one splice (its `splice` slot)."""

    __slots__ = ("splice",)

    def stop_splice(self) -> None:
        """Release the running splice, if any, without a report (the connection is closing)."""
        splice = self.splice
        if splice is not None:
            self.splice = None
            splice.cancel()
