"""Per-request cost of the observability hooks, measured in-process with timeit.

    python -m perf.observe_cost

Builds one worker's Recorder (metrics slot, access log to /dev/null) over a real
configuration, router and backend pool, and times `exchange_done` on a finished
exchange, the access-log formatting done later in batches, and request-id
generation. Figures are nanoseconds per request on this machine; docs/observability.md
quotes them.
"""

from __future__ import annotations

import tempfile
import timeit
from pathlib import Path
from types import SimpleNamespace

import uvloop

from appliance.config import load
from appliance.http.exchange import Exchange
from appliance.observe import request_id
from appliance.observe.accesslog import AccessLog
from appliance.observe.metrics import WorkerSlot
from appliance.observe.observer import Observer
from appliance.observe.recorder import Recorder
from appliance.routing.router import Router
from appliance.upstream.pool import BackendPool

CONFIG = """
[[listener]]
name = "http"
bind = "127.0.0.1:0"
[backend.app]
servers = ["127.0.0.1:9", "127.0.0.1:10"]
[[vhost]]
name = "www"
[[vhost.route]]
path = "/api"
backend = "app"
[[vhost.route]]
backend = "app"
[access_log]
enabled = true
file = "/dev/null"
batch = 100000000
"""
ROUNDS = 200_000


def _exchange(ctx: SimpleNamespace, route: object, pool: BackendPool) -> Exchange:
    client = SimpleNamespace(ctx=ctx, transport=None, peer_ip=b"127.0.0.1", peer_port=40000)
    exchange = Exchange(client)  # type: ignore[arg-type]
    exchange.method, exchange.url, exchange.host = b"GET", b"/small", b"example.com"
    exchange.route, exchange.backend, exchange.server = route, pool, pool.servers[0]
    exchange.status, exchange.head_bytes, exchange.bytes_out = 200, 80, 380
    exchange.started, exchange.upstream_time, exchange.first_byte = 0.0, 0.0004, 0.0003
    exchange.request_id = b"0123456789abcdef0000000000000001"
    return exchange


def per_call_ns(func: object, rounds: int = ROUNDS) -> float:
    return min(timeit.repeat(func, number=rounds, repeat=5)) / rounds * 1e9  # type: ignore[arg-type]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rproxy.toml"
        path.write_text(CONFIG)
        config = load(path)
    loop = uvloop.new_event_loop()
    pools = {"app": BackendPool("app", config.backend["app"], config.limits, loop, b"rproxyd")}
    router = Router(config, pools.__getitem__)
    route = router.match(b"example.com", b"GET", b"/small")
    ctx = SimpleNamespace(new_request_id=request_id.generator())
    exchange = _exchange(ctx, route, pools["app"])
    slot = WorkerSlot.private(config)
    metrics_only = Recorder(slot.cells(), slot.layout, pools, loop, None, set(), ())
    access = AccessLog(config, loop)
    with_log = Recorder(slot.cells(), slot.layout, pools, loop, access, set(), ())
    base = Observer()

    results = {
        "Observer.exchange_done (no-op base)": per_call_ns(lambda: base.exchange_done(exchange)),
        "Recorder.exchange_done, metrics only": per_call_ns(lambda: metrics_only.exchange_done(exchange)),
    }

    def logged() -> None:
        with_log.exchange_done(exchange)
        access.records.clear()  # keep the list small; clearing costs ~nothing per call
    results["Recorder.exchange_done, metrics + access-log append"] = per_call_ns(logged)
    results["access log: format one record (in the batch timer)"] = per_call_ns(
        lambda: access.format(exchange, 0.001), 50_000)
    batch = [(exchange, 0.001)] * 512

    def flush_batch() -> None:
        access.records = list(batch)
        access.flush()
    results["access log: format + write, per record (512-record batches to /dev/null)"] = (
        per_call_ns(flush_batch, 200) / len(batch))
    results["request id generation"] = per_call_ns(ctx.new_request_id)
    access.close()
    loop.close()
    for name, ns in results.items():
        print(f"{ns:8.0f} ns  {name}")


if __name__ == "__main__":
    main()
