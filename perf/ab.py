"""Two builds of rproxyd side by side on one CPU, under the same load at the same time.

    python -m perf.ab REF_A REF_B [--scenario new_conn] [--rounds 6] [--duration 5]

Sequential runs on this class of machine move ±10-25% between spells (perf/README.md), which
hides any change to the hot path under a few percent. Here both builds run at once: their
workers pinned to the same proxy CPU, each under its own copy of the scenario's load (wrk or
openssl s_time, on the load CPU), so whatever the machine does in a round it does to both.
Each round reports the CPU each build spent per unit of work (request or handshake) and
their ratio B/A; below 1 means B is cheaper. The median ratio of the rounds is the result.
Run it once with the same ref on both sides (REF_A == REF_B) to see the method's own spread.

The two builds share the CPU, so absolute µs are higher than in the harness (each worker
has half the CPU and its caches); compare ratios, not figures, with `perf/run`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from perf import load, proxies
from perf.harness import BY_NAME, PERF, Scenario, export_ref
from perf.tools import (
    CpuPlan,
    Service,
    cpu_seconds_between,
    cpu_ticks,
    ensure_tools,
    hold_bench_lock,
    log,
    plan_cpus,
)

KINDS = ("wrk", "tls")  # the load generators a round can run twice at once


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m perf.ab", description=__doc__.splitlines()[0])
    p.add_argument("ref_a", help="git ref of build A (the before)")
    p.add_argument("ref_b", help="git ref of build B (the after)")
    p.add_argument("--scenario", default="small_get",
                   help="a wrk or TLS scenario of perf/run: " + ", ".join(
                       s.name for s in BY_NAME.values() if s.kind in KINDS) + " (default small_get)")
    p.add_argument("--rounds", type=int, default=6, help="rounds, each loading both at once (default 6)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per round (default 5)")
    p.add_argument("--work", type=Path, default=PERF / "work", help="scratch directory (default perf/work)")
    a = p.parse_args(argv)
    sc = BY_NAME.get(a.scenario)
    if sc is None or sc.kind not in KINDS:
        p.error(f"--scenario must be a wrk or TLS scenario, not {a.scenario!r}")
    if not 1 <= a.rounds <= 30 or not 0 < a.duration <= 60:
        p.error("--rounds must be 1..30 and --duration 0..60 s (runs are bounded)")
    a.work = a.work.resolve()
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    sc = BY_NAME[a.scenario]
    with hold_bench_lock(a.work, "ab"):  # one benchmark at a time, as perf/run
        return _run(a, sc)


def _run(a: argparse.Namespace, sc: Scenario) -> int:
    work = a.work / "ab"
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    paths = ensure_tools(["nginx", "wrk", "openssl", "taskset"])
    cpus = plan_cpus(1)
    log(cpus.note)
    certs = proxies.make_certs(work)
    origin = proxies.origin_service(work, proxies.make_docroot(a.work), cpus, paths["nginx"], 1)
    services: list[Service] = [origin]
    try:
        origin.start()
        builds = {}
        for side, ref in (("a", a.ref_a), ("b", a.ref_b)):
            src = export_ref(ref, a.work)
            env = dict(os.environ, PYTHONPATH=str(src), PYTHONSAFEPATH="1")
            rproxyd = [sys.executable, "-m", "appliance"]
            svc, _ = proxies.rproxyd_service(work, origin.port, certs, cpus, rproxyd, 1, env,
                                             name=f"rproxyd_{side}")
            svc.start()
            services.append(svc)
            builds[side] = svc
        log(f"A = {a.ref_a}, B = {a.ref_b}: {sc.name}, {a.rounds} rounds of {a.duration:g} s, both at once")
        script = load.wrk_script(work, sc.body, sc.close)
        ratios = []
        with ThreadPoolExecutor(2) as pool:
            for n in range(1, a.rounds + 1):
                before = {side: cpu_ticks(svc.pids()) for side, svc in builds.items()}
                runs = {side: pool.submit(_load, sc, cpus, svc, a.duration, script)
                        for side, svc in builds.items()}
                done = {side: run.result() for side, run in runs.items()}
                cost = {}
                for side, svc in builds.items():
                    cpu = cpu_seconds_between(before[side], cpu_ticks(svc.pids()))
                    cost[side] = cpu / max(1, done[side]["requests"]) * 1e6
                ratios.append(cost["b"] / cost["a"])
                log(f"round {n}: A {cost['a']:.1f} µs, B {cost['b']:.1f} µs per "
                    f"{'handshake' if sc.kind == 'tls' else 'request'} "
                    f"({done['a']['requests']:,} / {done['b']['requests']:,}): B/A {ratios[-1]:.3f}")
        print(f"{sc.name}: B/A median {statistics.median(ratios):.3f} over {len(ratios)} rounds "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f}); below 1: B is cheaper")
    finally:
        for svc in reversed(services):
            svc.stop()
    return 0


def _load(sc: Scenario, cpus: CpuPlan, svc: Service, seconds: float, script: Path) -> dict:
    """One round of the scenario's load on one build (run in a thread, beside the other's)."""
    if sc.kind == "tls":
        return load.run_s_time(cpus, svc.extra_ports[sc.tls_key], seconds, sc.resumed, 2, sc.path)
    url = f"http://127.0.0.1:{svc.port}{sc.path}"
    return load.run_wrk(cpus, url, sc.conns // 2, seconds, script, sc.body)


if __name__ == "__main__":
    sys.exit(main())
