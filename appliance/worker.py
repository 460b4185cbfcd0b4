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
from collections.abc import Callable, Mapping
from functools import partial

import uvloop

from appliance.config.schema import BackendConfig, Config, Http2Config, ListenerConfig
from appliance.context import WorkerContext
from appliance.http.downstream import ClientConnection, ClientListener, ClientState
from appliance.http.h2_downstream import H2Connection
from appliance.http.proxy_accept import ProxyAcceptor
from appliance.listeners import open_listener
from appliance.observe import request_id
from appliance.observe.accesslog import AccessLog
from appliance.observe.metrics import WorkerSlot
from appliance.observe.recorder import Recorder
from appliance.observe.sampled import SampledLog
from appliance.phases.dispatch import PeerChoice
from appliance.phases.loader import PhaseError
from appliance.phases.selection import dispatch_per_vhost
from appliance.process import heartbeat, logs
from appliance.process.heap import keep_heap
from appliance.routing.router import Router
from appliance.routing.trust import TrustedProxies
from appliance.shm import SharedRegion
from appliance.tls.contexts import TlsListener, build_worker_tls
from appliance.upstream.peers import PeerPools
from appliance.upstream.pool import BackendPool

log = logging.getLogger("rproxyd.worker")

# Exit status of a worker that failed before it accepted a single connection: the
# supervisor treats it as a broken build or configuration, not a crash to retry at once.
EXIT_BOOT_FAILURE = 3

# Signals a worker handles on its loop. A supervisor blocks them around fork() so none
# is lost or runs the supervisor's inherited handler before the loop takes them over.
WORKER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1})

DRAIN_IDLE_GRACE = 1.0  # seconds an idle connection may still send one request while draining
DRAIN_TUNNEL_POLL = 0.1  # tunnels end on their own deadlines: only their count is watched
DRAIN_POLL = 0.005  # short, so a request that arrives while draining is marked before its answer


class Worker:
    """Serves the given listening sockets until told to stop."""

    def __init__(
        self,
        config: Config,
        sockets: Mapping[str, socket.socket | list[socket.socket]],
        slot: int = 0,
        beat: heartbeat.HeartbeatCell | None = None,
        ticket_ring: SharedRegion | None = None,
        metrics: WorkerSlot | None = None,
    ) -> None:
        self.config = config
        # This worker's slot in the supervisor's metrics region (appliance/observe/metrics.py).
        self.metrics = metrics
        # The supervisor's shared ticket-key ring (appliance/tls/ring.py), mapped before fork.
        self.ticket_ring = ticket_ring
        # One socket per listener, or several when a supervisor with fewer slots than
        # sockets hands this worker the surplus ones (see appliance.process.sockets).
        self.sockets = {name: s if isinstance(s, list) else [s] for name, s in sockets.items()}
        self.slot = slot
        self.beat = beat
        self._stopping: asyncio.Event | None = None
        self._graceful = True
        self._accepting = False
        self.boot_error = ""  # why run() returned EXIT_BOOT_FAILURE, one line (for the supervisor)

    def run(self) -> int:
        """Run the loop in this process; return the exit status.

        A failure before the first accept returns EXIT_BOOT_FAILURE; later ones raise.
        """
        keep_heap()
        try:
            return uvloop.run(self._serve())
        except (OSError, PhaseError) as exc:
            if self._accepting:
                raise
            # A file that `rproxyd -t` found openable and that changed since, or a phases
            # class whose __init__ raised: one line, the file named, no traceback.
            log.error("worker %d failed to start: %s", self.slot, exc)
            self.boot_error = str(exc)
            return EXIT_BOOT_FAILURE
        except Exception:
            if self._accepting:
                raise
            log.exception("worker %d failed to start", self.slot)
            self.boot_error = "an unexpected error (the traceback is in the log)"
            return EXIT_BOOT_FAILURE

    def build_context(self, loop: asyncio.AbstractEventLoop) -> WorkerContext:
        config = self.config
        via = config.proxy.via.encode()

        def make_pool(name: str, backend: BackendConfig) -> BackendPool:
            return BackendPool(name, backend, config.limits, loop, via, config.proxy.internal_redirect_status,
                               config.proxy.splice_min_bytes)

        pools = {name: make_pool(name, backend) for name, backend in config.backend.items()}
        phases = config.phases
        # The operator's module, imported here, in the worker, after fork: each generation's
        # workers run the file as it is now, and its __init__ runs as the service user.
        dispatch = (dispatch_per_vhost(phases.module, phases.class_name, [v.phases for v in config.vhost])
                    if phases.module else ())
        router = Router(config, pools.__getitem__, dispatch)
        return WorkerContext(loop=loop, limits=config.limits, router=router, pools=pools, via=via,
                             peer_choice=PeerChoice(pools) if dispatch else None,
                             peer_pools=(PeerPools(loop, make_pool, phases.max_peer_pools,
                                                   phases.peer_pool_idle_timeout) if dispatch else None),
                             trusted=TrustedProxies(config.proxy.trusted_proxies),
                             timeout_log=SampledLog(logging.getLogger("rproxyd.client"), loop,
                                                    "client timeouts", "rproxyd_client_timeouts_total"),
                             flood_log=SampledLog(logging.getLogger("rproxyd.client"), loop,
                                                  "pending timeouts", "rproxyd_pending_timeouts_total",
                                                  logging.WARNING),
                             new_request_id=request_id.generator() if config.proxy.request_id
                             else request_id.never)

    def build_recorder(self, ctx: WorkerContext) -> Recorder:
        """Metrics into this worker's slot, and the access log if enabled."""
        slot = self.metrics or WorkerSlot.private(self.config)
        access = AccessLog(self.config, ctx.loop) if self.config.access_log.enabled else None
        return Recorder(slot.cells(), slot.layout, ctx.pools, ctx.loop, access, ctx.clients, ctx.idle,
                        ctx.tunnels)

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        ctx = self.build_context(loop)
        recorder = self.build_recorder(ctx)
        ctx.observer = recorder
        self._stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stop, True)
        loop.add_signal_handler(signal.SIGINT, self.stop, False)
        loop.add_signal_handler(signal.SIGQUIT, self.stop, False)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs, recorder)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
        if self.beat is not None:
            self.beat.start(loop)
        servers: list[asyncio.Server | ProxyAcceptor] = []
        tls = build_worker_tls(self.config, ctx.router.vhost_name, self.ticket_ring)
        refusals = SampledLog(logging.getLogger("rproxyd.client"), loop, "refused PROXY protocol connections",
                              "rproxyd_proxy_headers_refused_total", logging.WARNING)
        for listener in self.config.listener:
            site = tls.get(listener.name)
            h2 = _h2_settings(self.config, listener, site)
            listener_side = (ClientListener(ctx, b"http", None, h2) if site is None
                             else ClientListener(ctx, b"https", site.fallback, h2))
            factory = _client_factory(listener_side, None)
            for sock in self.sockets[listener.name]:
                # A socket the supervisor opened for a new slot is only bound: it joins the
                # kernel's reuseport group, and gets connections, from this listen(), now
                # that a process accepts on it (appliance/process/sockets.py). create_server
                # would listen() too; saying it here keeps that contract visible.
                sock.listen(listener.backlog)
                if listener.proxy_protocol:
                    acceptor = ProxyAcceptor(loop, sock, partial(_client_factory, listener_side),
                                             site.context if site is not None else None,
                                             self.config.limits.header_timeout, ctx.trusted, ctx.observer,
                                             refusals)
                    acceptor.start()
                    servers.append(acceptor)
                    continue
                servers.append(await loop.create_server(
                    factory, sock=sock, backlog=listener.backlog,
                    ssl=site.context if site is not None else None,
                    ssl_handshake_timeout=self.config.limits.header_timeout if site is not None else None))
        for pool in ctx.pools.values():
            pool.start()
        recorder.start()
        self._accepting = True
        if self.beat is not None:
            self.beat.set_phase(heartbeat.ACCEPTING)
        log.info("worker %d serving %s", self.slot, ", ".join(
            f"{name}={sock.getsockname()[0]}:{sock.getsockname()[1]}"
            for name, socks in self.sockets.items() for sock in socks))
        await self._stopping.wait()
        if self.beat is not None:
            self.beat.set_phase(heartbeat.DRAINING)
        # Each ends when no connection its listener accepted is left (open tunnels keep it
        # pending; the drain waits for them anyway). Started before the servers close:
        # uvloop's Server.wait_closed returns at once when called after close().
        closing = [loop.create_task(server.wait_closed()) for server in servers]
        await asyncio.sleep(0)
        # Closing our fd of a listening socket stops this process accepting; the queue
        # lives on in the supervisor's fd and the slot's next worker keeps serving it.
        for server in servers:
            server.close()
        if self._graceful:
            # Let one loop turn read requests already sitting in socket buffers, so that
            # they are answered (with Connection: close) rather than cut by the idle close.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            await self._drain(ctx, closing)
        for task in closing:
            task.cancel()  # still pending if the drain ended first
        for server in servers:
            if isinstance(server, ProxyAcceptor):
                server.abort()
        ctx.idle.close_all(True)
        for client in list(ctx.clients):
            client.close(force=True)
        ctx.tunnels.close_all()
        recorder.close()
        return 0

    @staticmethod
    def _reopen_logs(recorder: Recorder) -> None:
        """SIGUSR1: logrotate moved the files away."""
        logs.reopen()
        recorder.reopen()

    def stop(self, graceful: bool = True) -> None:
        """Stop accepting; graceful waits for in-flight requests up to drain_timeout."""
        self._graceful = self._graceful and graceful
        if self._stopping is not None:
            self._stopping.set()

    async def _drain(self, ctx: WorkerContext, closing: list[asyncio.Task]) -> None:
        """Finish in-flight requests (answered with Connection: close), then close.

        For DRAIN_IDLE_GRACE nothing is closed: a connection accepted just before we
        stopped accepting may not have sent its first request yet (no client retries
        that), and closing a connection right after a response that promised keep-alive
        races the client's next request. Instead every request whose response has not
        started is marked to be answered with Connection: close, so busy clients leave on
        their own. After the grace, idle connections close and busy ones close after
        their current response. Compacted idle connections (appliance/http/idle.py) wait in
        `ctx.idle` meanwhile: one that sends a request during the grace is a ClientConnection
        again, and is answered as the others are; after the grace the rest close.

        A connection the listeners accepted is not a client yet while its TLS handshake runs
        (uvloop calls connection_made when it completes) or its PROXY header is read, so
        during the grace the drain also waits for `closing` (the servers' `wait_closed`): the
        worker must not exit under a handshake as if it had nothing left to serve.

        Open upgrade tunnels (WebSockets) are kept for `tunnel_drain_timeout`, each closing
        on its own when it ends or at that deadline (appliance/http/tunnel.py); the worker
        exits once nothing is left.
        """
        loop = ctx.loop
        ctx.draining = True
        ctx.tunnels.drain(self.config.proxy.tunnel_drain_timeout)
        deadline = loop.time() + self.config.proxy.drain_timeout
        grace_end = loop.time() + min(DRAIN_IDLE_GRACE, self.config.proxy.drain_timeout)
        while ((ctx.clients or ctx.idle or (loop.time() < grace_end and not all(t.done() for t in closing)))
               and loop.time() < deadline and self._graceful):
            in_grace = loop.time() < grace_end
            if not in_grace:
                ctx.idle.close_all(False)
            for client in list(ctx.clients):
                if not in_grace:
                    client.shutdown()
                elif type(client) is H2Connection:
                    client.notice()  # no new streams, please; GOAWAY with the last id follows
                elif client.state is ClientState.BUSY:
                    for exchange in client.exchanges:
                        if not exchange.response_started:
                            exchange.close_after = True
            await asyncio.sleep(DRAIN_POLL)
        if ctx.clients or ctx.idle:
            log.warning("drain timeout: cutting %d connections", len(ctx.clients) + len(ctx.idle))
            ctx.idle.close_all(True)
            for client in list(ctx.clients):
                client.close(force=True)
        while ctx.tunnels.open and self._graceful:
            await asyncio.sleep(DRAIN_TUNNEL_POLL)  # each tunnel closes itself by tunnel_drain_timeout


def _h2_settings(config: Config, listener: ListenerConfig, site: TlsListener | None) -> Http2Config | None:
    """The [http2] settings for a listener's connections, or None where HTTP/2 cannot happen:
    a TLS listener whose alpn leaves h2 out, a plaintext one with h2c off."""
    if site is not None:
        return config.http2 if "h2" in listener.tls.alpn else None
    return config.http2 if listener.h2c else None


def _client_factory(listener: ClientListener, peer: tuple[str, int] | None) -> Callable[[], ClientConnection]:
    """The protocol factory of a listener's connections; `peer`: the client a PROXY header sent
    (None: the socket's own peer). A partial, not a lambda: uvloop calls it for every accepted
    connection, and a partial reaches the compiled constructor without an interpreted frame."""
    return partial(ClientConnection, listener, peer)


def run_single(config: Config) -> int:
    """Run one worker in this process (the mode before the supervisor takes over)."""
    logs.setup(config.log)
    sockets = {listener.name: open_listener(listener) for listener in config.listener}
    return Worker(config, sockets).run()
