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
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from enum import IntEnum
from typing import Protocol

from appliance.statemachine import Transitions

_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
PIPE_BYTES = 1024 * 1024  # pipe capacity (pipe-max-size by default): bytes moved per pair of splice calls
_IDLE_PIPES = 64  # empty pipes a pool keeps: one per concurrent large body, reused


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

    __slots__ = ("_destination_fd", "_in_pipe", "_loop", "_owner", "_pipe", "_pipes", "_source_fd",
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
        self._loop = loop
        self._pipes = pipes
        self.remaining = remaining
        self._owner = owner
        self._in_pipe = 0
        self._source_fd = os.dup(source.get_extra_info("socket").fileno())
        self._destination_fd = os.dup(destination.get_extra_info("socket").fileno())
        self._pipe = pipes.acquire()
        self.state = SpliceState.FILLING
        loop.add_reader(self._source_fd, self._fill)

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
                    self._loop.remove_reader(self._source_fd)
                    self._loop.add_writer(self._destination_fd, self._drain)
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
            self._loop.remove_writer(self._destination_fd)
            self._loop.add_reader(self._source_fd, self._fill)
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
            self._loop.remove_reader(self._source_fd)
        elif self.state is SpliceState.DRAINING:
            self._loop.remove_writer(self._destination_fd)
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
