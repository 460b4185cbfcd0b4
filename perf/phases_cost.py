"""Per-request cost of the operator phases of `small_get_phases`, measured in-process with timeit.

    python -m perf.phases_cost

Runs what one request of that scenario does with perf/phases_site.py's class, on a real
Exchange, through the request path's own calls (appliance/phases/calls.py and the
dispatch record): new_ctx, the request view, request_filter (one header read) and its
result check, upstream_request_filter (one header set) on the built-ins' headers, and
the exchange dropping its views when it ends. Also each part alone, to show where the
time goes. Figures are nanoseconds per request on this machine; compare before and
after a change with the same interpreter, several times (perf/README.md).
"""

from __future__ import annotations

import timeit
from types import SimpleNamespace

from appliance.http.exchange import Exchange
from appliance.observe import request_id
from appliance.phases import calls
from appliance.phases.dispatch import compile_dispatch, response_or_none
from perf.phases_site import Bench

ROUNDS = 200_000
# What wrk sends (Host only), and a browser-like request head.
HEADS = {
    "wrk head (Host)": [(b"Host", b"127.0.0.1:8080")],
    "8 headers": [(b"Host", b"example.com"), (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64)"),
                  (b"Accept", b"text/html,application/xhtml+xml"), (b"Accept-Language", b"en-GB,en;q=0.5"),
                  (b"Accept-Encoding", b"gzip, deflate, br"), (b"Cookie", b"session=0123456789abcdef"),
                  (b"Referer", b"https://example.com/"), (b"Cache-Control", b"no-cache")],
}


def per_call_ns(func: object, rounds: int = ROUNDS) -> float:
    return min(timeit.repeat(func, number=rounds, repeat=5)) / rounds * 1e9  # type: ignore[arg-type]


def _exchange(headers: list[tuple[bytes, bytes]]) -> Exchange:
    ctx = SimpleNamespace(new_request_id=request_id.generator())
    client = SimpleNamespace(ctx=ctx, peer_ip=b"127.0.0.1", transport=None)
    exchange = Exchange(client)  # type: ignore[arg-type]
    exchange.method, exchange.url, exchange.target = b"GET", b"/small", b"/small"
    exchange.host, exchange.headers = b"example.com", headers
    exchange.phases = compile_dispatch(Bench())
    return exchange


def measure(headers: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """ns per request of the phase path, and of its parts, for one request head."""
    exchange = _exchange(headers)
    phases = exchange.phases

    def request() -> None:
        exchange.phase_ctx = phases.new_ctx()
        response_or_none(phases.request_filter(calls.request_view(exchange), exchange.phase_ctx),
                         "request_filter")
        calls.upstream_request(exchange, exchange.headers)
        exchange.req = exchange.resp = exchange.phase_ctx = None

    def view() -> None:
        calls.request_view(exchange)
        exchange.req = None

    exchange.phase_ctx = {}
    req = calls.request_view(exchange)
    return {
        "one request through both phases": per_call_ns(request),
        "  request view made": per_call_ns(view),
        "  request_filter (req.headers.get) on a made view": per_call_ns(
            lambda: phases.request_filter(req, exchange.phase_ctx)),
        "  upstream_request (rebase, req.headers.set)": per_call_ns(
            lambda: calls.upstream_request(exchange, exchange.headers)),
    }


def main() -> None:
    for label, headers in HEADS.items():
        print(label)
        for name, ns in measure(headers).items():
            print(f"{ns:8.0f} ns  {name}")


if __name__ == "__main__":
    main()
