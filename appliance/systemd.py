"""sd_notify for the supervisor: READY, RELOADING, STOPPING, STATUS and watchdog pings.

Every call is a no-op when NOTIFY_SOCKET is unset (not run by systemd), so the
supervisor never has to ask whether it is under systemd.
"""

from __future__ import annotations

import os
import time

import sdnotify


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares RELOADING=1 against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


SEND_TIMEOUT = 0.5


class Notifier:
    """Sends state changes to systemd and keeps its watchdog fed."""

    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self._enabled else None
        if self._notifier is not None and self._notifier.socket is not None:
            # The queue of a datagram socket is short (net.unix.max_dgram_qlen, 10 by default):
            # wait a little for room, but never let a reader that stopped reading block
            # the supervisor's loop for good (sdnotify swallows the timeout).
            self._notifier.socket.settimeout(SEND_TIMEOUT)
        self._last_status = ""
        self.watchdog_interval = self._watchdog_interval()
        self._last_ping = 0.0

    @staticmethod
    def _watchdog_interval() -> float | None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        owner = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0 or (owner and owner != str(os.getpid())):
            return None
        # Ping at half the deadline so one late loop turn does not get us killed.
        return int(usec) / 1e6 / 2

    def send(self, *fields: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(fields))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self, status: str) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """STATUS= alone, sent only when it changed."""
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def watchdog(self, now: float) -> None:
        """Ping if WATCHDOG_USEC asks for it and half its period has passed."""
        if self.watchdog_interval is not None and now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")
