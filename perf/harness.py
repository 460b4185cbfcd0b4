"""The benchmark driver behind perf/run: scenarios, repeats, CPU accounting, medians and ratios."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import breakdown, load, proxies, report, syscalls
from .tools import (
    CpuPlan,
    Service,
    cpu_seconds_between,
    cpu_ticks,
    ensure_tools,
    hold_bench_lock,
    log,
    machine_info,
    plan_cpus,
)

PERF = Path(__file__).resolve().parent
ROOT = PERF.parent
PROXIES = ("direct", "nginx", "haproxy", "rproxyd", "tls_floor", "tls_relay_floor", "rproxyd_phases",
           "rproxyd_pure")
COMPETITORS = ("nginx", "haproxy")
# rproxyd run another way, measured against plain rproxyd in the same run: what rproxyd_service
# gets for each (an operator phases module; variables added to rproxyd's environment).
RPROXYD_VARIANTS = {
    "rproxyd_phases": {"phases": PERF / "phases_site.py"},
    # The pure-Python build of the same code (appliance/build.py), beside the compiled one.
    "rproxyd_pure": {"env": {"RPROXYD_PURE": "1"}},
}
# The TLS calibrations (perf/tls_floor.py): the floor, and the floor plus a pooled backend
# round trip (the relay floor). They run in the TLS scenarios only.
TLS_CALIBRATIONS = ("tls_floor", "tls_relay_floor")
# Not in every scenario: the TLS calibrations run in the TLS scenarios, a variant in the
# scenarios that name it.
ONLY_IN_OWN_SCENARIOS = (*TLS_CALIBRATIONS, *RPROXYD_VARIANTS)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    kind: str  # wrk | rate | tls | idle | burst | ws (echo) | tunnel (bulk) | h2 (h2load)
    metric: str  # req | bytes | p99 | rss | stall
    path: str = "/small"
    conns: int = 64
    body: int = 0
    close: bool = False
    tls_key: str = ""  # tls_ecdsa | tls_rsa
    resumed: bool = False
    # h2 scenarios: requests in flight per connection (h2load -m), the proxies' listener
    # ("h2c": prior knowledge; "h2_tls": ALPN; "grpc": the h2c one, routing gRPC to an h2
    # backend), and whether each request is a gRPC unary call.
    streams: int = 1
    h2_listener: str = ""
    grpc: bool = False
    target: float | None = None  # minimum ratio (req/bytes), maximum (p99, stall), or KiB (rss)
    target_text: str = ""
    # rproxyd-only scenarios: the variant measured against plain rproxyd in the same run, and
    # the only proxies it runs.
    variant: str = ""
    # Variants that also run here, beside every other proxy, reported with their ratio to plain
    # rproxyd too; the target stays plain rproxyd's.
    beside: tuple[str, ...] = ()
    # The proxy the target is a ratio to, in the same run: nginx, plain rproxyd for a variant,
    # the TLS floor for the TLS scenarios (issue 15). Ratios to nginx are reported in any case.
    baseline: str = "nginx"

    @property
    def higher_is_better(self) -> bool:
        return self.metric in ("req", "bytes")


MIB = 1 << 20
# Targets: issue 15's, as ratios to nginx in the same run unless a baseline says otherwise.
SCENARIOS = [
    Scenario("small_get", "Small GET (128 B), keep-alive", "wrk", "req", "/small", 64,
             target=0.6, target_text="req/CPU-s >= 0.6x nginx", beside=("rproxyd_pure",)),
    Scenario("get_1m", "1 MiB GET", "wrk", "bytes", "/1m", 16,
             target=1.5, target_text="bytes/CPU-s >= 1.5x nginx"),
    Scenario("get_100m", "100 MiB GET", "wrk", "bytes", "/100m", 4,
             target=1.5, target_text="bytes/CPU-s >= 1.5x nginx"),
    Scenario("upload_1m", "1 MiB upload (POST)", "wrk", "bytes", "/upload", 16, body=MIB,
             target=1.5, target_text="bytes/CPU-s >= 1.5x nginx"),
    Scenario("new_conn", "New connection per request", "wrk", "req", "/small", 32, close=True,
             target=0.5, target_text="req/CPU-s >= 0.5x nginx", beside=("rproxyd_pure",)),
    Scenario("latency", "Latency at fixed offered load", "rate", "p99", "/small", 32,
             target=1.3, target_text="p99 <= 1.3x nginx"),
    Scenario("idle_10k", "10k idle keep-alive connections", "idle", "rss", "/small",
             target=1.3, target_text="<= 1.3 KiB RSS per connection"),
    # conns: slow header senders, all hitting the header timeout together beside a latency probe.
    Scenario("timeout_burst_500", "Header-timeout burst, 500 slow clients", "burst", "stall", conns=500),
    Scenario("timeout_burst_1000", "Header-timeout burst, 1000 slow clients", "burst", "stall", conns=1000),
    Scenario("timeout_burst_2000", "Header-timeout burst, 2000 slow clients", "burst", "stall", conns=2000,
             target=2.0, target_text="worker stall <= 2x nginx"),
    # Operator phases (issue 14): a class with request_filter and upstream_request_filter, one
    # header operation each (perf/phases_site.py), against plain rproxyd.
    Scenario("small_get_phases", "Small GET through two operator phases, vs plain rproxyd", "wrk", "req",
             "/small", 64, target=0.85, target_text="req/CPU-s >= 0.85x plain rproxyd",
             variant="rproxyd_phases", baseline="rproxyd"),
    # TLS: against the floor of rproxyd's runtime (perf/tls_floor.py), issue 15's target.
    Scenario("tls_full_ecdsa", "TLS full handshake, ECDSA P-256", "tls", "req", tls_key="tls_ecdsa",
             target=0.95, target_text="handshakes/CPU-s >= 0.95x the TLS floor", baseline="tls_floor"),
    Scenario("tls_full_rsa", "TLS full handshake, RSA-2048", "tls", "req", tls_key="tls_rsa",
             target=0.95, target_text="handshakes/CPU-s >= 0.95x the TLS floor", baseline="tls_floor"),
    Scenario("tls_resumed_ecdsa", "TLS resumed handshake, ECDSA P-256", "tls", "req", tls_key="tls_ecdsa",
             resumed=True, target=0.95, target_text="handshakes/CPU-s >= 0.95x the TLS floor, 100% resumed",
             baseline="tls_floor"),
    Scenario("tls_resumed_rsa", "TLS resumed handshake, RSA-2048", "tls", "req", tls_key="tls_rsa",
             resumed=True, target=0.95, target_text="handshakes/CPU-s >= 0.95x the TLS floor, 100% resumed",
             baseline="tls_floor"),
]
# Upgrade tunnels (issue 16), through each proxy to perf/ws_origin.py: WebSocket echo of 1 KiB
# messages (conns tunnels, WS_WINDOW messages in flight on each) and 1 GiB through one tunnel.
WS_MESSAGE = 1024
WS_WINDOW = 16
TUNNEL_BYTES = 1 << 30
SCENARIOS += [
    Scenario("ws_echo", "WebSocket echo, 1 KiB messages", "ws", "req", "/ws/echo", 16,
             target=0.5, target_text="messages/CPU-s >= 0.5x nginx"),
    Scenario("tunnel_1g", "1 GiB through one WebSocket tunnel", "tunnel", "bytes", "/ws/sink", 1,
             target=1.0, target_text="bytes/CPU-s >= 1.0x nginx"),
]
# HTTP/2 (issue 17), h2load against each proxy's h2 listeners. Backends: the HTTP/1.1 origin for
# plain requests (the proxies turn h2 streams into HTTP/1.1 requests), the origin's h2c listener
# for gRPC (h2 on both legs), which answers every call from a file with its trailers.
SCENARIOS += [
    Scenario("h2_small", "h2c small GET (100 B), 32 connections x 10 streams", "h2", "req", "/100b", 32,
             streams=10, h2_listener="h2c", target=0.5, target_text="req/CPU-s >= 0.5x nginx"),
    Scenario("h2_small_tls", "h2 small GET over TLS (ALPN), 32 connections x 10 streams", "h2", "req",
             "/100b", 32, streams=10, h2_listener="h2_tls"),
    Scenario("h2_1m", "h2c 1 MiB GET, 4 connections x 4 streams", "h2", "bytes", "/1m", 4, streams=4,
             h2_listener="h2c", target=0.8, target_text="bytes/CPU-s >= 0.8x nginx"),
    Scenario("grpc_unary", "gRPC unary calls (h2c both legs; reference HAProxy), 32 x 10", "h2", "req",
             proxies.GRPC_PATH, 32, streams=10, h2_listener="grpc", grpc=True),
]
BY_NAME = {s.name: s for s in SCENARIOS}
QUICK = ["small_get", "get_1m"]
# Timeout bursts: a slow client sends one more header line this often (twice before the timeout).
DRIBBLE_S = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="perf/run", description=__doc__)
    p.add_argument("--scenarios", default="all",
                   help=f"comma-separated scenarios or 'all' (default); known: {', '.join(BY_NAME)}")
    p.add_argument("--proxies", default=",".join(PROXIES),
                   help="comma-separated proxies to drive (default: all of direct,nginx,haproxy,rproxyd,"
                   "tls_floor,tls_relay_floor,rproxyd_phases,rproxyd_pure; tls_floor and tls_relay_floor, "
                   "the TLS calibrations, run in the TLS scenarios only, rproxyd_phases in the *_phases "
                   "scenarios only, which run rproxyd and it alone, rproxyd_pure (the pure-Python build, "
                   "RPROXYD_PURE=1) in small_get and new_conn)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per scenario per proxy; the median "
                   "is reported (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load before the runs "
                   "of a throughput scenario (default 1; 0 disables)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes/threads of every proxy (default 1)")
    p.add_argument("--latency-rate", type=int, default=5000,
                   help="offered requests/s in the latency scenario, the same for every proxy (default 5000)")
    p.add_argument("--tls-clients", type=int, default=3, help="parallel openssl s_time clients (default 3)")
    p.add_argument("--breakdown", action="store_true",
                   help="record every measured run with perf and report the CPU per request by part "
                   "(OpenSSL, kernel, libc, the proxy's own code); see perf/breakdown.py")
    p.add_argument("--syscalls", action="store_true",
                   help="count every system call the proxy enters during the measured runs (perf stat on "
                   "the syscall tracepoints) and report them per request; see perf/syscalls.py")
    p.add_argument("--access-log", action="store_true",
                   help="every proxy writes an access log (default: all off); for the logging cost")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: small_get and get_1m, 2 repeats of 3 s; output in perf/work/quick/")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for RESULTS.md, results.json, results.png (default perf/, or "
                   "perf/work/quick/ with --quick)")
    p.add_argument("--rproxyd-ref", default=None, metavar="GITREF",
                   help="benchmark rproxyd's appliance/ as of this git ref (exported with git archive into "
                   "the scratch directory, with its compiled modules built there if it has any) instead "
                   "of the working tree; for before/after figures")
    p.add_argument("--work", type=Path, default=PERF / "work", help="scratch directory (default perf/work)")
    a = p.parse_args(argv)
    a.work = a.work.resolve()  # nginx and HAProxy resolve relative paths against their own prefix
    if a.quick:
        if a.scenarios == "all":
            a.scenarios = ",".join(QUICK)
        a.repeats = min(a.repeats, 2)
        a.duration = min(a.duration, 3.0)
        a.out = a.out or a.work / "quick"
    a.out = a.out or PERF
    names = (list(BY_NAME) if a.scenarios == "all"
             else [s.strip() for s in a.scenarios.split(",") if s.strip()])
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)}")
    a.scenario_list = [BY_NAME[n] for n in names]
    a.proxy_list = [x.strip() for x in a.proxies.split(",") if x.strip()]
    bad = [x for x in a.proxy_list if x not in PROXIES]
    if bad:
        p.error(f"unknown proxy: {', '.join(bad)}")
    if a.repeats < 1 or a.repeats > 15 or a.duration <= 0 or a.duration > 120:
        p.error("--repeats must be 1..15 and --duration 0..120 s (runs are bounded)")
    return a


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self._lock = hold_bench_lock(args.work, "bench")
        self.work = args.work / "run"
        if self.work.exists():
            shutil.rmtree(self.work)
        (self.work / "logs").mkdir(parents=True)
        self.paths = ensure_tools(["nginx", "haproxy", "wrk", "h2load", "nghttp", "openssl", "taskset"]
                                  + (["perf"] if args.breakdown or args.syscalls else []))
        self.cpus: CpuPlan = plan_cpus(args.workers)
        log(self.cpus.note)
        self.notes: dict[str, str] = {}
        self.www = proxies.make_docroot(args.work)
        if args.access_log:
            proxies.ACCESS_LOG_DIR = self.work / "logs"
            self.notes["access_log"] = "on for every proxy (perf/run --access-log)"
        self.certs = proxies.make_certs(self.work)
        self.grpc_request = proxies.grpc_request_file(self.work)
        rp = Path(sys.executable).with_name("rproxyd")
        self.rproxyd = [str(rp)] if rp.exists() else [sys.executable, "-m", "appliance"]
        self.rproxyd_env: dict | None = None
        if args.rproxyd_ref:
            src = export_ref(args.rproxyd_ref, args.work)
            self.rproxyd = [sys.executable, "-m", "appliance"]
            self.rproxyd_env = dict(os.environ, PYTHONPATH=str(src), PYTHONSAFEPATH="1")
            self.notes["rproxyd_source"] = f"appliance/ from git ref {args.rproxyd_ref}"
            log(f"rproxyd from git ref {args.rproxyd_ref} ({src})")
        # Which build plain rproxyd runs (compiled or pure Python; a ref from before the build says
        # its version only).
        self.notes["rproxyd_build"] = subprocess.run(
            [*self.rproxyd, "--version"], capture_output=True, text=True, env=self.rproxyd_env,
            check=True).stdout.strip()
        log(self.notes["rproxyd_build"])
        self.origin: Service | None = None
        self.ws_origin: Service | None = None
        self.results: list[dict] = []
        self.failures: list[str] = []

    # ------------------------------------------------------------ services

    def start_origin(self) -> None:
        # The origin gets the same worker count; it shares the load generator's CPU(s).
        self.origin = proxies.origin_service(self.work, self.www, self.cpus, self.paths["nginx"],
                                             self.a.workers)
        self.origin.start()
        proxies.ORIGIN_H2C_PORT = self.origin.extra_ports["h2c"]
        log(f"origin nginx on 127.0.0.1:{self.origin.port} (h2c: {proxies.ORIGIN_H2C_PORT})")
        if self.ws_origin is None or not self.ws_origin.alive():
            self.ws_origin = proxies.ws_origin_service(self.work, self.cpus)
            self.ws_origin.start()
            proxies.WS_ORIGIN_PORT = self.ws_origin.port
            log(f"WebSocket origin on 127.0.0.1:{self.ws_origin.port}")

    def start_proxies(self, sc: Scenario) -> dict[str, Service]:
        assert self.origin is not None
        w, o, c, n = self.work, self.origin.port, self.certs, self.a.workers
        wanted = _proxies_of(sc, self.a.proxy_list)
        svcs: dict[str, Service] = {}
        if "nginx" in wanted:
            svcs["nginx"] = proxies.nginx_service(w, o, c, self.cpus, self.paths["nginx"], n)
        if "haproxy" in wanted:
            svcs["haproxy"] = proxies.haproxy_service(w, o, c, self.cpus, self.paths["haproxy"], n)
        if "rproxyd" in wanted:
            svcs["rproxyd"], notes = proxies.rproxyd_service(w, o, c, self.cpus, self.rproxyd, n,
                                                             self.rproxyd_env, h2=sc.kind == "h2")
            self.notes.update({f"rproxyd_{k}": v for k, v in notes.items()})
        for variant, options in RPROXYD_VARIANTS.items():
            if variant in wanted:
                env = self.rproxyd_env
                if "env" in options:
                    env = {**(env or os.environ), **options["env"]}
                svcs[variant], _ = proxies.rproxyd_service(w, o, c, self.cpus, self.rproxyd, n, env,
                                                           name=variant, phases=options.get("phases"))
        if "tls_floor" in wanted:
            svcs["tls_floor"] = proxies.tls_floor_service(w, c, self.cpus, n)
        if "tls_relay_floor" in wanted:
            svcs["tls_relay_floor"] = proxies.tls_floor_service(w, c, self.cpus, n, relay_to=o)
        for name, svc in list(svcs.items()):
            try:
                svc.start()
            except RuntimeError as exc:
                self.failures.append(f"{name} did not start: {exc}\n{svc.log_tail()}")
                log(f"{name} did not start: {exc}")
                del svcs[name]
        return svcs

    # ------------------------------------------------------------ runs

    def measure(self, sc: Scenario, proxy: str, svc: Service, seconds: float) -> dict:
        assert self.origin is not None
        pids = svc.pids()
        opids = self.origin.pids()
        recording = counting = None
        if self.a.breakdown and proxy != "direct" and sc.kind != "idle":
            recording = breakdown.PerfRecord(self.paths["perf"], pids,
                                             self.work / f"perf-{sc.name}-{proxy}.data")
        if self.a.syscalls and sc.kind != "idle":
            counting = syscalls.SyscallCount(self.paths["perf"], pids,
                                             self.work / f"syscalls-{sc.name}-{proxy}.csv")
        with recording or contextlib.nullcontext(), counting or contextlib.nullcontext():
            before, obefore = cpu_ticks(pids), cpu_ticks(opids)
            res = self.run_load(sc, proxy, svc, seconds)
            after, oafter = cpu_ticks(svc.pids() or pids), cpu_ticks(opids)
        res["cpu_s"] = cpu_seconds_between(before, after)
        res["origin_cpu_s"] = cpu_seconds_between(obefore, oafter)
        if proxy == "direct":
            res["origin_cpu_s"] = 0.0
        if counting is not None:
            res["syscalls"] = counting.counts()
        if recording is not None:
            res["cpu_parts_s"], res["own_code_s"] = breakdown.split(recording.shares(self.paths["perf"]),
                                                                    res["cpu_s"])
            res["waking_s"] = recording.waking_share(self.paths["perf"]) * res["cpu_s"]
        return res

    def run_load(self, sc: Scenario, proxy: str, svc: Service, seconds: float) -> dict:
        """One bounded run of the scenario's load generator against one proxy: its raw figures."""
        port = svc.port
        url = f"http://127.0.0.1:{port}{sc.path}"
        if sc.kind == "wrk":
            script = load.wrk_script(self.work, sc.body, sc.close)
            res = load.run_wrk(self.cpus, url, sc.conns, seconds, script, sc.body)
        elif sc.kind == "rate":
            res = load.run_h2load_rate(self.cpus, url, self.a.latency_rate, sc.conns, seconds,
                                       self.work / f"h2load-{proxy}.log")
        elif sc.kind == "h2":
            res = load.run_h2load(self.cpus, self._h2_url(sc, svc), sc.conns, sc.streams, seconds,
                                  self.grpc_request if sc.grpc else None,
                                  proxies.GRPC_REQUEST_HEADERS if sc.grpc else ())
        elif sc.kind == "tls":
            res = load.run_s_time(self.cpus, svc.extra_ports[sc.tls_key], seconds, sc.resumed,
                                  self.a.tls_clients, sc.path)
        elif sc.kind == "idle":
            res = load.run_idle(self.cpus, port, proxies.idle_connections(),
                                lambda: _rss(svc.pids()))
        elif sc.kind == "ws":
            res = load.run_ws_echo(self.cpus, port, sc.conns, seconds, WS_MESSAGE, WS_WINDOW)
        elif sc.kind == "tunnel":
            res = load.run_tunnel_bulk(self.cpus, port, TUNNEL_BYTES)
        elif sc.kind == "burst":
            res = load.run_timeout_burst(self.cpus, port, min(sc.conns, proxies.idle_connections()),
                                         proxies.HEADER_TIMEOUT_S, DRIBBLE_S)
        else:  # pragma: no cover
            raise ValueError(sc.kind)
        return res

    @staticmethod
    def _h2_url(sc: Scenario, svc: Service) -> str:
        scheme = "https" if sc.h2_listener == "h2_tls" else "http"
        return f"{scheme}://127.0.0.1:{svc.extra_ports[sc.h2_listener]}{sc.path}"

    def run_scenario(self, sc: Scenario) -> None:
        log(f"scenario {sc.name}: {sc.title}")
        svcs = self.start_proxies(sc)
        assert self.origin is not None
        if "direct" in self.a.proxy_list:
            svcs = {"direct": self.origin, **svcs}
        proxy_list = _proxies_of(sc, self.a.proxy_list)
        order = [p for p in proxy_list if p in svcs]
        runs: dict[str, list[dict]] = {p: [] for p in proxy_list}
        status: dict[str, str] = {}
        notes: dict[str, str] = {}
        for p in proxy_list:
            if p not in svcs:
                status[p], notes[p] = "failed", "did not start"
            elif sc.kind == "tls" and p == "direct":
                status[p], notes[p] = "n/a", "origin is plain HTTP"
            elif sc.kind in ("ws", "tunnel") and p == "direct":
                status[p], notes[p] = "n/a", "the WebSocket origin is not the HTTP origin"
            elif sc.kind == "tls" and sc.tls_key not in svcs[p].extra_ports:
                status[p] = "unsupported"
                notes[p] = self.notes.get(f"{p}_tls", "no TLS listener")
            elif sc.kind == "h2" and p == "direct" and sc.h2_listener not in svcs[p].extra_ports:
                status[p], notes[p] = "n/a", "the origin has no h2 TLS listener"
            elif sc.kind == "h2" and sc.h2_listener not in svcs[p].extra_ports:
                status[p] = "unsupported"
                notes[p] = self.notes.get(f"{p}_{sc.h2_listener}", f"no {sc.h2_listener} listener")
        if sc.grpc:
            # h2load counts HTTP 200s; a gRPC call succeeded only with its grpc-status trailer.
            for p in (p for p in order if p not in status):
                got = load.grpc_call_status(self._h2_url(sc, svcs[p]), self.grpc_request,
                                            proxies.GRPC_REQUEST_HEADERS)
                if got != "0":
                    status[p], notes[p] = "failed", f"a gRPC call ended without grpc-status 0 ({got})"
                    self.failures.append(f"{sc.name}/{p}: {notes[p]}")
        active = [p for p in order if p not in status]
        try:
            if self.a.warmup > 0 and sc.kind in ("wrk", "rate"):
                for p in active:
                    with contextlib.suppress(Exception):
                        load.run_wrk(self.cpus, f"http://127.0.0.1:{svcs[p].port}{sc.path}", sc.conns,
                                     self.a.warmup, load.wrk_script(self.work, sc.body, sc.close), sc.body)
            if self.a.warmup > 0 and sc.kind == "h2":
                for p in active:
                    with contextlib.suppress(Exception):
                        self.run_load(sc, p, svcs[p], self.a.warmup)
            # Repeats are interleaved across proxies so drift on the machine hits all of them alike.
            for rep in range(self.a.repeats):
                if sc.kind == "idle" and rep:
                    # RSS growth is only meaningful in a fresh process: the allocator keeps what
                    # the previous run's connections freed. Restart the proxies for every run.
                    for p in active:
                        if p != "direct" and p not in status:
                            svcs[p].stop()
                            svcs[p].start()
                for p in active:
                    if p in status:
                        continue
                    svc = svcs[p]
                    try:
                        res = self.measure(sc, p, svc, self.a.duration)
                    except Exception as exc:
                        res = {"exception": f"{type(exc).__name__}: {exc}"}
                    if not svc.alive():
                        status[p] = "failed"
                        notes[p] = (f"{p} exited (status {svc.proc.returncode if svc.proc else '?'}) during "
                                    f"run {rep + 1}; log tail: {svc.log_tail(6)}")
                        self.failures.append(f"{sc.name}/{p}: {notes[p]}")
                        log(f"  {p}: CRASHED: {notes[p]}")
                        continue
                    if "exception" in res:
                        status[p], notes[p] = "failed", res["exception"]
                        self.failures.append(f"{sc.name}/{p}: {res['exception']}")
                        log(f"  {p}: FAILED: {res['exception']}")
                        continue
                    runs[p].append(res)
                    log(f"  {p} run {rep + 1}: {_brief(sc, res)}")
        finally:
            for p, svc in svcs.items():
                if p != "direct":
                    svc.stop()
        self.results.extend(summarise(sc, runs, status, notes, proxy_list))

    def run(self) -> int:
        t0 = time.monotonic()
        info = machine_info(self.paths)
        self.start_origin()
        try:
            for sc in self.a.scenario_list:
                self.run_scenario(sc)
                assert self.origin is not None
                if not self.origin.alive():
                    log("origin died; restarting it")
                    self.start_origin()
        finally:
            if self.origin is not None:
                self.origin.stop()
            if self.ws_origin is not None:
                self.ws_origin.stop()
        elapsed = time.monotonic() - t0
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": info,
            "settings": {
                "workers": self.a.workers,
                "cpu_plan": self.cpus.note,
                "duration_s": self.a.duration,
                "repeats": self.a.repeats,
                "warmup_s": self.a.warmup,
                "latency_rate_rps": self.a.latency_rate,
                "tls_clients": self.a.tls_clients,
                "idle_connections": proxies.idle_connections(),
                "pool": proxies.POOL,
                "access_logs": "on for all" if self.a.access_log else "off for all",
                "quick": self.a.quick,
                "elapsed_s": round(elapsed, 1),
            },
            "notes": self.notes,
            "failures": self.failures,
        }
        out = self.a.out
        out.mkdir(parents=True, exist_ok=True)
        report.write_all(out, meta, self.results, SCENARIOS)
        log(f"done in {elapsed:.0f}s: {out / 'RESULTS.md'}, {out / 'results.json'}, {out / 'results.png'}")
        print((out / "RESULTS.md").read_text())
        return 0


def _proxies_of(sc: Scenario, chosen: list[str]) -> list[str]:
    """The proxies a scenario runs, of those chosen: the TLS calibrations only in TLS scenarios;
    an rproxyd-only scenario runs plain rproxyd and its variant, nothing else; a variant runs
    beside the others where the scenario names it."""
    if sc.variant:
        return [p for p in chosen if p in ("rproxyd", sc.variant)]
    return [p for p in chosen if p not in ONLY_IN_OWN_SCENARIOS or p in sc.beside
            or (p in TLS_CALIBRATIONS and sc.kind == "tls")]


def export_ref(ref: str, work: Path) -> Path:
    """appliance/ as of a git ref, in the scratch directory, built as `make` builds the working
    tree: its C ticket callback and, if the ref has a build list, its compiled request path
    (setup.py), so before/after figures compare compiled builds. Kept per commit, so alternating
    runs against the same ref build it once."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    src = work / f"rproxyd-ref-{commit[:12]}"
    done = src / ".built"
    if done.exists():
        return src
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    paths = ["appliance"]
    if _in_commit(commit, "appliance/_build_modules.txt"):
        paths += ["setup.py", "pyproject.toml", "README.md"]
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, *paths],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    if (src / "appliance/tls/ticketkeys.c").exists():
        # The ref's C ticket callback, built by the same Makefile rule as the working tree's.
        subprocess.run(["make", "-s", "-C", str(src), "-f", str(ROOT / "Makefile"),
                        "appliance/tls/_ticketkeys.so"], check=True)
    if (src / "setup.py").exists():
        log(f"building the compiled modules of {ref} ({commit[:12]})")
        subprocess.run([sys.executable, "setup.py", "--quiet", "build_ext", "--inplace", "--parallel", "2"],
                       cwd=src, check=True)
    done.touch()
    return src


def _in_commit(commit: str, path: str) -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}:{path}"],
                          capture_output=True, check=False).returncode == 0


def _rss(pids: list[int]) -> int:
    from .tools import rss_kib

    return rss_kib(pids)


def _brief(sc: Scenario, r: dict) -> str:
    seconds = r["seconds"]  # 0 for a run that measures no throughput (a timeout burst)
    rps = r["requests"] / seconds if seconds else 0
    mbs = r["bytes"] / seconds / 1e6 if seconds else 0
    s = f"{rps:,.0f} req/s, {mbs:,.1f} MB/s, cpu {r['cpu_s']:.2f}s"
    if r.get("p99_ms") is not None:
        s += f", p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
    if r.get("rss_per_conn_kib") is not None:
        s += f", {r['idle_conns']} idle, {r['rss_per_conn_kib']:.2f} KiB/conn"
    if "resumed_pct" in r:
        s += f", resumed {r['resumed_pct']}%"
    if r.get("stall_ms") is not None:
        s += (f", stall {r['stall_ms']:.1f} ms (baseline {r['baseline_ms']:.1f}),"
              f" {r['answered_408']} got 408, {r['closed']} closed, opened over {r['open_spread_ms']:.0f} ms,"
              f" ended over {r['expiry_spread_ms']:.0f} ms")
    if r["errors"]:
        s += f", ERRORS {r['errors']}"
    return s


def _cpu_breakdown(sc: Scenario, runs: list[dict]) -> dict:
    """Median CPU per request (per MiB for the byte scenarios) of each part, and of the own code's objects."""
    per_mib = sc.metric == "bytes"

    def per_unit(seconds: float, r: dict) -> float | None:
        work = r["bytes"] / MIB if per_mib else r["requests"]
        return seconds * 1e6 / work if work else None

    recorded = [r for r in runs if "cpu_parts_s" in r]
    objects = sorted({dso for r in recorded for dso in r["own_code_s"]})
    own = {dso: _median([per_unit(r["own_code_s"].get(dso, 0.0), r) for r in recorded]) for dso in objects}
    return {
        "unit": "µs per MiB" if per_mib else "µs per request",
        "total": _median([per_unit(r["cpu_s"], r) for r in recorded]),
        "parts": {part: _median([per_unit(r["cpu_parts_s"][part], r) for r in recorded])
                  for part in breakdown.PARTS},
        "kernel_waking": _median([per_unit(r.get("waking_s", 0.0), r) for r in recorded]),
        "own_code": dict(sorted(own.items(), key=lambda item: -(item[1] or 0))),
    }


def _syscalls_per_unit(sc: Scenario, runs: list[dict]) -> dict:
    """Median entries per request (per MiB for the byte scenarios) of each system call, most first."""
    per_mib = sc.metric == "bytes"
    counted = [(r["syscalls"], r["bytes"] / MIB if per_mib else r["requests"])
               for r in runs if "syscalls" in r]
    counted = [(calls, work) for calls, work in counted if work]
    per = {name: _median([calls.get(name, 0) / work for calls, work in counted])
           for name in {name for calls, _ in counted for name in calls}}
    per["total"] = _median([sum(calls.values()) / work for calls, work in counted])
    return {"unit": "per MiB" if per_mib else "per request",
            "calls": dict(sorted(per.items(), key=lambda item: -(item[1] or 0)))}


def _median(vals: list) -> float | None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def summarise(sc: Scenario, runs: dict[str, list[dict]], status: dict[str, str], notes: dict[str, str],
              proxies_order: list[str]) -> list[dict]:
    rows = []
    for p in proxies_order:
        rs = runs.get(p, [])
        per_run = []
        for r in rs:
            work = r["requests"] if sc.metric in ("req", "p99", "rss", "stall") else r["bytes"]
            per_run.append({
                "rps": r["requests"] / r["seconds"] if r["seconds"] else None,
                "bytes_per_s": r["bytes"] / r["seconds"] if r["seconds"] else None,
                "cpu_s": r["cpu_s"],
                "per_cpu_s": work / r["cpu_s"] if r["cpu_s"] > 0 else None,
                **{k: v for k, v in r.items() if k not in ("requests", "bytes", "seconds", "cpu_s")},
            })
        row: dict = {
            "scenario": sc.name,
            "proxy": p,
            "status": status.get(p, "ok" if rs else "failed"),
            "metric": {"req": "requests per CPU-second", "bytes": "bytes per CPU-second",
                       "p99": "p99 latency (ms) at fixed offered load",
                       "rss": "RSS KiB per idle keep-alive connection",
                       "stall": "longest probe request (ms) while slow clients time out"}[sc.metric],
            "runs": len(rs),
        }
        for k in ("rps", "bytes_per_s", "cpu_s", "per_cpu_s", "p50_ms", "p99_ms", "origin_cpu_s"):
            row[k] = _median([r.get(k) for r in per_run])
        for k in ("offered_rps", "resumed_pct", "idle_conns", "rss_per_conn_kib", "rss_before_kib",
                  "rss_after_kib", "stall_ms", "baseline_ms", "slow_conns", "answered_408", "closed",
                  "open_spread_ms", "expiry_spread_ms", "probe_realtime"):
            if any(k in r for r in per_run):
                row[k] = _median([r.get(k) for r in per_run])
        if any("cpu_parts_s" in r for r in rs):
            row["cpu_breakdown"] = _cpu_breakdown(sc, rs)
        if any("syscalls" in r for r in rs):
            row["syscalls"] = _syscalls_per_unit(sc, rs)
        errs: dict[str, int] = {}
        for r in per_run:
            for k, v in r.get("errors", {}).items():
                errs[k] = errs.get(k, 0) + v
        row["errors"] = errs
        if sc.kind == "tls":
            row["p50_ms"] = row["p99_ms"] = None
        if p == "direct":
            row["note"] = "no proxy: cpu_s is the origin's own CPU"
        if p in notes:
            row["note"] = notes[p]
        if row["status"] != "ok":
            for k in ("rps", "bytes_per_s", "cpu_s", "per_cpu_s", "p50_ms", "p99_ms"):
                row[k] = None if not rs else row[k]
        rows.append(row)
    # Ratios against nginx, HAProxy and the scenario's baseline measured in this run, on its
    # primary figure.
    key = {"req": "per_cpu_s", "bytes": "per_cpu_s", "p99": "p99_ms", "rss": "rss_per_conn_kib",
           "stall": "stall_ms"}[sc.metric]
    ref = {r["proxy"]: r.get(key) for r in rows if r["status"] == "ok"}
    for r in rows:
        also = (("rproxyd",) if sc.beside else ()) + (("tls_relay_floor",) if sc.kind == "tls" else ())
        for comp in dict.fromkeys((*COMPETITORS, sc.baseline, *also)):
            mine, theirs = r.get(key), ref.get(comp)
            ok = r["status"] == "ok" and r["proxy"] not in ("direct", comp) and mine is not None and theirs
            r[f"vs_{comp}"] = round(mine / theirs, 3) if ok else None
        r["ratio_of"] = key
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    return bench.run()


if __name__ == "__main__":
    sys.exit(main())

