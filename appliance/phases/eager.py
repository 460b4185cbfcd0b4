"""Run an async phase's coroutine eagerly: no Task unless it really has to wait.

Most `async def` phases finish without suspending (a cache hit, a decision from the
headers). Driving the coroutine by hand until its first suspension costs one
`send`; only a coroutine that suspends is handed to the loop, as a Task that goes
on from exactly where it stopped (the future it is waiting on is passed through, so
asyncio's own protocol applies: cancellation, exceptions, `await asyncio.sleep(0)`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any


def start(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> tuple[bool, Any]:
    """(True, result) if `coro` finished without suspending, else (False, a Task finishing it).

    An exception the coroutine raises before suspending propagates from here, as a
    plain phase's would.
    """
    try:
        awaited = coro.send(None)
    except StopIteration as done:
        return True, done.value
    return False, loop.create_task(_finish(coro, awaited))


async def _finish(coro: Coroutine[Any, Any, Any], awaited: Any) -> Any:
    return await _Resumed(coro, awaited)


class _Resumed:
    """An awaitable that first yields what `coro` was waiting on, then drives `coro` on."""

    __slots__ = ("awaited", "coro")

    def __init__(self, coro: Coroutine[Any, Any, Any], awaited: Any) -> None:
        self.coro = coro
        self.awaited = awaited

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, awaited = self.coro, self.awaited
        while True:
            try:
                sent = yield awaited
            except BaseException as exc:  # the Task throws a cancellation (or an error) in
                try:
                    awaited = coro.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                awaited = coro.send(sent)
            except StopIteration as done:
                return done.value
