"""One worker process: a uvloop loop, its listeners, its own backend pools.

Nothing process-wide is created in `Worker.__init__` (it only stores what it is
given), so a supervisor can construct a Worker and fork before `run()` creates
the loop, signal handlers and connections in the child.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass, field

import uvloop

from appliance.config.schema import Config, LimitsConfig
from appliance.http.downstream import ClientConnection
from appliance.listeners import open_listener
from appliance.routing.router import Router
from appliance.upstream.pool import BackendPool

log = logging.getLogger("rproxyd.worker")


@dataclass(slots=True, eq=False)
class WorkerContext:
    """What every connection of this worker needs, built once per generation."""

    loop: asyncio.AbstractEventLoop
    limits: LimitsConfig
    router: Router
    pools: dict[str, BackendPool]
    clients: set[ClientConnection] = field(default_factory=set)


class Worker:
    """Serves the given listening sockets until told to stop."""

    def __init__(self, config: Config, sockets: dict[str, socket.socket], slot: int = 0) -> None:
        self.config = config
        self.sockets = sockets
        self.slot = slot
        self._stopping: asyncio.Event | None = None
        self._graceful = True

    def run(self) -> int:
        """Run the loop in this process; return the exit status."""
        return uvloop.run(self._serve())

    def build_context(self, loop: asyncio.AbstractEventLoop) -> WorkerContext:
        config = self.config
        via = config.proxy.via.encode()
        pools = {
            name: BackendPool(name, backend, config.limits, loop, via)
            for name, backend in config.backend.items()
        }
        router = Router(config, pools.__getitem__)
        return WorkerContext(loop=loop, limits=config.limits, router=router, pools=pools)

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        ctx = self.build_context(loop)
        self._stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stop, True)
        loop.add_signal_handler(signal.SIGINT, self.stop, False)
        loop.add_signal_handler(signal.SIGQUIT, self.stop, False)
        servers = []
        for listener in self.config.listener:
            sock = self.sockets[listener.name]
            servers.append(
                await loop.create_server(lambda: ClientConnection(ctx), sock=sock, backlog=listener.backlog)
            )
        for pool in ctx.pools.values():
            pool.warm_up()
        log.info("worker %d serving %s", self.slot,
                 ", ".join(f"{lc.name}={lc.bind}" for lc in self.config.listener))
        await self._stopping.wait()
        for server in servers:
            server.close()
        if self._graceful:
            await self._drain(ctx)
        for client in list(ctx.clients):
            client.close(force=True)
        return 0

    def stop(self, graceful: bool = True) -> None:
        """Stop accepting; graceful waits for in-flight requests up to drain_timeout."""
        self._graceful = self._graceful and graceful
        if self._stopping is not None:
            self._stopping.set()

    async def _drain(self, ctx: WorkerContext) -> None:
        for client in list(ctx.clients):
            client.shutdown()
        deadline = ctx.loop.time() + self.config.proxy.drain_timeout
        while ctx.clients and ctx.loop.time() < deadline and self._graceful:
            await asyncio.sleep(0.05)
        if ctx.clients:
            log.warning("drain timeout: cutting %d connections", len(ctx.clients))


def run_single(config: Config) -> int:
    """Run one worker in this process (the mode before the supervisor takes over)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sockets = {listener.name: open_listener(listener) for listener in config.listener}
    return Worker(config, sockets).run()
