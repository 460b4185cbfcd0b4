"""Server health: passive failure counting and active HTTP probes.

Each worker judges health on its own (shared-nothing). Workers see the same
failures of a dead server and probe on the same interval, so they agree within
about interval * max(rise, fall) for active checks, and within the first
max_fails failures each for passive marking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from typing import TYPE_CHECKING

from appliance.config.schema import BackendConfig, HealthConfig
from appliance.upstream.proxy_head import health_prefix

if TYPE_CHECKING:
    from appliance.upstream.server_view import ServerView

log = logging.getLogger("rproxyd.health")


class PassiveHealth:
    """Failures within a sliding window; max_fails of them take the server out for down_time.

    Only when another server of the backend is still usable (Server.note_failure decides):
    passive counting alone never takes out a backend's last usable server, as nginx never
    marks the only server of an upstream unavailable.
    """

    __slots__ = ("_config", "_failures", "down_until")

    def __init__(self, config: BackendConfig) -> None:
        self._config = config
        self._failures: deque[float] = deque()
        self.down_until = 0.0

    def failure(self, now: float) -> bool:
        """Record a failure; True when it makes max_fails within fail_window (the count restarts)."""
        config = self._config
        if not config.max_fails:
            return False
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - config.fail_window:
            failures.popleft()
        if len(failures) >= config.max_fails and now >= self.down_until:
            failures.clear()
            return True
        return False

    def mark_down(self, now: float) -> None:
        self.down_until = now + self._config.down_time


class ActiveProbe:
    """GET health.path on one server every interval; rise/fall consecutive results flip it."""

    __slots__ = ("_config", "_loop", "_server", "_streak", "_task", "up")

    def __init__(self, server: ServerView, config: HealthConfig, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._config = config
        self._loop = loop
        # Until the first verdict a server is trusted, so start-up does not refuse traffic.
        self.up = True
        self._streak = 0  # positive: consecutive passes; negative: consecutive failures
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = self._loop.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        config = self._config
        # Spread the probes of many servers and workers over the interval.
        await asyncio.sleep(random.uniform(0, config.interval))
        while True:
            passed = await self.probe_once()
            self._record(passed)
            await asyncio.sleep(config.interval)

    def _record(self, passed: bool) -> None:
        config = self._config
        if passed:
            self._streak = max(self._streak, 0) + 1
            if not self.up and self._streak >= config.rise:
                self.up = True
                log.warning("server %s is UP (active probe)", self._server.address)
                self._server.pool.grow()
        else:
            self._streak = min(self._streak, 0) - 1
            if self.up and -self._streak >= config.fall:
                self.up = False
                log.warning("server %s is DOWN (active probe)", self._server.address)
                # As for passive marking: requests queued for this server (hash) would
                # otherwise wait for a connection it will not get, until their timeout.
                self._server.pool.rebalance(self._server)

    async def probe_once(self) -> bool:
        config = self._config
        address = self._server.address
        host = config.host or str(address)
        # A server that expects a PROXY header gets one with no client in it (HAProxy's
        # check-send-proxy sends the same).
        request = health_prefix(self._server.config.proxy_protocol) + (
            f"GET {config.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rproxyd-health\r\n"
            "Connection: close\r\n\r\n").encode()
        writer = None
        try:
            async with asyncio.timeout(config.timeout):
                reader, writer = await asyncio.open_connection(
                    address.host, address.port, ssl=self._server.tls, server_hostname=self._server.tls_name)
                if self._server.config.protocol == "h2":
                    from appliance.upstream.h2_probe import h2_status  # the binding, for h2 backends only
                    scheme = b"https" if self._server.tls is not None else b"http"
                    return await h2_status(reader, writer, scheme, host.encode(), config.path.encode()) \
                        == config.expect_status
                writer.write(request)
                status_line = await reader.readline()
            parts = status_line.split(None, 2)
            return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1] == b"%d" % (
                config.expect_status
            )
        except (OSError, TimeoutError, ValueError):
            return False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
