"""Why a worker failed to boot, told to the supervisor: one line through a pipe per worker.

A worker that cannot start (a phases class whose __init__ raised, a file that became
unreadable since `rproxyd -t`) exits with EXIT_BOOT_FAILURE; its own log line names
the cause, but the supervisor's line is the one an operator reads (the reload's
stderr, the failed start), so it carries the cause too. The worker writes before it
exits, at most PIPE_BUF bytes (one atomic write), so the supervisor reads all of it
without blocking once it has reaped the worker.
"""

from __future__ import annotations

import contextlib
import os
import select

_MAX = select.PIPE_BUF


def open_pipe() -> tuple[int, int]:
    """(read end for the supervisor, write end for the worker), both close-on-exec."""
    return os.pipe()


def tell(fd: int, reason: str) -> None:
    """In the worker: the cause of its boot failure, one line."""
    if fd >= 0 and reason:
        data = reason.replace("\n", " ").encode(errors="replace")[:_MAX]
        with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
            os.write(fd, data)


def collect(fd: int) -> str:
    """In the supervisor, once the worker exited: what it told ("" if nothing); closes `fd`."""
    if fd < 0:
        return ""
    try:
        os.set_blocking(fd, False)
        return os.read(fd, _MAX).decode(errors="replace")
    except BlockingIOError:
        return ""
    finally:
        os.close(fd)
