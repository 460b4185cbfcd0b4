"""The supervisor's side of observability: metrics slots, folding, the admin endpoints.

The supervisor calls a few named hooks (a worker is spawned, exits, a reload
ends, the loop wakes) and hands over a `snapshot()` of its state for /status;
everything else about metrics and the admin listener lives here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from appliance.config.schema import Config
from appliance.observe import metrics as m
from appliance.observe import prometheus
from appliance.observe.admin import AdminServer
from appliance.shm import SharedRegion

log = logging.getLogger("rproxyd.admin")

# What the supervisor reports for /status: phase, generation, and per worker: pid, slot,
# cpu, generation, state, started (time.monotonic()), cell (heartbeat cell = metrics slot).
Snapshot = Callable[[], dict[str, Any]]
JSON = "application/json"


class ObserveHub:
    def __init__(self, region: SharedRegion, config: Config, snapshot: Snapshot) -> None:
        self.board = m.MetricsBoard(region)
        self._region = region
        self._snapshot = snapshot
        self._layouts: dict[int, tuple[Config, m.Layout]] = {}
        self.config = config
        self.layout = self._layout(config)
        self.admin: AdminServer | None = None
        self._configure_admin(config)

    # ------------------------------------------------------ supervisor hooks
    def worker_slot(self, config: Config, cell: int) -> m.WorkerSlot:
        """Before fork: a cleared slot for the worker that gets heartbeat cell `cell`."""
        self.board.clear(cell)
        return m.WorkerSlot(self._region, cell, self._layout(config))

    def worker_exited(self, cell: int, restarted: bool) -> None:
        """After reaping: keep its counters; `restarted`: it died outside a drain."""
        self.board.fold(cell)
        if restarted:
            self.board.add(m.P_RESTARTS)

    def reload_done(self, ok: bool, config: Config | None = None) -> None:
        self.board.add(m.P_RELOADS_OK if ok else m.P_RELOADS_FAILED)
        if config is not None:
            self.config = config
            self.layout = self._layout(config)
            self._configure_admin(config)
            # Layouts of replaced generations are only needed until their workers are gone.
            self._layouts = {id(config): self._layouts[id(config)]}

    def published(self, generation: int, workers: int) -> str | None:
        """Gauges only the supervisor knows; returns the admin address for status.json."""
        self.board.set(m.P_GENERATION, generation)
        self.board.set(m.P_WORKERS, workers)
        return self.admin.address if self.admin is not None else None

    def fds(self) -> tuple[list[int], list[int]]:
        return self.admin.fds() if self.admin is not None else ([], [])

    def all_fds(self) -> set[int]:
        return self.admin.all_fds() if self.admin is not None else set()

    def serve(self, readable: list[int], writable: list[int]) -> None:
        if self.admin is not None:
            self.admin.serve(readable, writable)

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()
            self.admin = None

    # ------------------------------------------------------------- internals
    def _layout(self, config: Config) -> m.Layout:
        known = self._layouts.get(id(config))
        if known is None or known[0] is not config:
            known = self._layouts[id(config)] = (config, self.board.directory.layout(config))
        return known[1]

    def _configure_admin(self, config: Config) -> None:
        wanted = config.admin
        if self.admin is not None and self.admin.config == wanted:
            return
        self.close()
        if not wanted.enabled:
            return
        try:
            self.admin = AdminServer(wanted, self.handle)
        except OSError as exc:
            # No admin endpoint is no reason to refuse to proxy: log it, keep serving.
            log.error("admin listener %s: %s", wanted.bind, exc)
            return
        log.info("admin listener on %s", self.admin.address)

    # -------------------------------------------------------------- endpoints
    def handle(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            state = self._snapshot()
            totals = self.board.totals(w["cell"] for w in state["workers"])
            return 200, prometheus.CONTENT_TYPE, prometheus.render(self.board.directory.entries,
                                                                    totals).encode()
        if path == "/status":
            return 200, JSON, (json.dumps(self.status(), indent=1) + "\n").encode()
        if path == "/healthz":
            state = self._snapshot()
            serving = [w for w in state["workers"]
                       if w["generation"] == state["generation"] and w["state"] == "accepting"]
            ok = state["phase"] != "stopping" and bool(serving)
            body = json.dumps({"ok": ok, "phase": state["phase"], "serving": len(serving)}) + "\n"
            return (200 if ok else 503), JSON, body.encode()
        return 404, "text/plain; charset=utf-8", b"try /metrics, /status or /healthz\n"

    def status(self) -> dict[str, Any]:
        """The supervisor's snapshot, plus per-worker connections and per-server health."""
        state = self._snapshot()
        now = time.monotonic()
        worker_base = self.board.directory.block(m.WORKER_BLOCK)
        cells = [w["cell"] for w in state["workers"]]
        for worker in state["workers"]:
            worker["uptime"] = round(now - worker.pop("started"), 3)
            worker["connections"] = self.board.cell(worker.pop("cell"), worker_base + m.W_CONNECTIONS)
        backends: dict[str, list[dict[str, Any]]] = {}
        for (backend, server), base in self.layout.servers.items():
            def total(offset: int, base: int = base) -> int:
                return sum(self.board.cell(cell, base + offset) for cell in cells)
            up = total(m.S_UP)
            backends.setdefault(backend, []).append({
                "server": server,
                "healthy": up > 0,
                "up_in_workers": up,
                "connections": {state_name: total(m.S_IDLE + i)
                                for i, state_name in enumerate(m.CONNECTION_STATES)},
            })
        state["backends"] = backends
        return state
