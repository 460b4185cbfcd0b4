"""Which Python functions run per TLS connection, in rproxyd and in the TLS floor (cProfile).

    python -m perf.tls_profile [--seconds 6] [--resumed] [--out perf/work/tls_profile]

Starts the origin (nginx), rproxyd (one worker, the harness's configuration) and the TLS
floor (perf/tls_floor.py), each under cProfile for a window of the load only: `uvloop.run`
is wrapped so that the profiler is switched on `--skip` seconds into the loop and off
`--seconds` later, then dumped. Three `openssl s_time` clients load each in turn. The
report gives, per proxy, the calls and the profiled time per connection (the number of
`connection_made` calls in the window), by module and for the functions that take most,
with the time in the profiled Python code in all. Run it with RPROXYD_PURE=1 to see rproxyd's own modules
(compiled ones are one opaque call each); cProfile's own overhead inflates every call
alike, so read the counts and the difference between the two, not the absolute µs.
"""

from __future__ import annotations

import argparse
import os
import pstats
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from perf.load import run_s_time
from perf.proxies import make_certs, make_docroot, origin_service, rproxyd_service, tls_floor_service
from perf.tools import plan_cpus, which

ROOT = Path(__file__).resolve().parent.parent


def _profiled_run() -> None:
    """Entry point of a profiled server: `python perf/tls_profile.py --run MODULE ARGS...`."""
    import asyncio
    import cProfile
    import runpy

    import uvloop

    out, skip, seconds = os.environ["TLS_PROFILE_OUT"], float(os.environ["TLS_PROFILE_SKIP"]), \
        float(os.environ["TLS_PROFILE_SECONDS"])
    plain_run = uvloop.run

    async def window(coro: Coroutine[Any, Any, Any]) -> Any:
        loop = asyncio.get_running_loop()
        prof = cProfile.Profile()

        def stop() -> None:
            prof.disable()
            prof.dump_stats(f"{out}.{os.getpid()}")

        loop.call_later(skip, prof.enable)
        loop.call_later(skip + seconds, stop)
        return await coro

    uvloop.run = lambda coro, **kw: plain_run(window(coro), **kw)
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    if module.endswith(".py"):
        runpy.run_path(module, run_name="__main__")
    else:
        runpy.run_module(module, run_name="__main__", alter_sys=True)


def _report(name: str, path: Path, top: int) -> None:
    rows = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    conns = max((calls for (file, _, func), (calls, *_rest) in rows.items()
                 if func == "connection_made" and ("downstream" in file or "tls_floor" in file)), default=0)
    if not conns:
        return  # the supervisor's loop, or a window without load
    per = 1e6 / conns
    total = sum(own for (_, _, own, *_rest) in rows.values())
    print(f"\n== {name}: {conns} connections profiled, {total * per:.1f} µs of profiled time and "
          f"{sum(calls for (calls, *_rest) in rows.values()) / conns:.1f} calls per connection")
    # By module: the stdlib's ssl.py wrappers, _ssl's C methods, rproxyd's modules.
    modules: Counter[str] = Counter()
    calls_in: Counter[str] = Counter()
    for (file, _, func), (calls, _nc, own, *_rest) in rows.items():
        key = f"_ssl {func.split(chr(39))[1]}" if "_ssl." in func else \
            "C builtins" if file == "~" else f"{Path(file).parent.name}/{Path(file).name}"
        modules[key] += own
        calls_in[key] += calls
    print(f"{'calls/conn':>10} {'own µs/conn':>11}  module")
    for key, own in modules.most_common(top // 2):
        print(f"{calls_in[key] / conns:10.2f} {own * per:11.2f}  {key}")
    print(f"{'calls/conn':>10} {'own µs/conn':>11}  function")
    for (file, line, func), (calls, _nc, own, *_rest) in sorted(rows.items(), key=lambda kv: -kv[1][2])[:top]:
        where = f"{Path(file).name}:{line}" if line else file
        print(f"{calls / conns:10.2f} {own * per:11.2f}  {func} ({where})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="profiled window (default 6)")
    parser.add_argument("--skip", type=float, default=3.0, help="seconds of the loop before the window")
    parser.add_argument("--resumed", action="store_true", help="resumed handshakes (s_time -reuse)")
    parser.add_argument("--top", type=int, default=45, help="functions listed per proxy")
    parser.add_argument("--out", type=Path, default=ROOT / "perf/work/tls_profile")
    args = parser.parse_args()
    work = args.out.resolve()
    (work / "prof").mkdir(parents=True, exist_ok=True)
    for old in (work / "prof").iterdir():
        old.unlink()
    certs = make_certs(work)
    cpus = plan_cpus(1)
    origin = origin_service(work, make_docroot(work), cpus, which("nginx") or "nginx", 1)
    origin.start()
    entry = [sys.executable, str(Path(__file__).resolve()), "--run"]
    try:
        for name in ("rproxyd", "tls_floor"):
            env = dict(os.environ, TLS_PROFILE_OUT=str(work / "prof" / name), TLS_PROFILE_SKIP=str(args.skip),
                       TLS_PROFILE_SECONDS=str(args.seconds), PYTHONPATH=str(ROOT))
            if name == "rproxyd":
                service, _notes = rproxyd_service(work, origin.port, certs, cpus, [*entry, "appliance"], 1,
                                                  env=env)
            else:
                service = tls_floor_service(work, certs, cpus, 1)
                service.argv = cpus.wrap_proxy([*entry, str(ROOT / "perf/tls_floor.py"), *service.argv[-4:]])
                service.env = env
            service.start()
            try:
                started = time.monotonic()
                run_s_time(cpus, service.extra_ports["tls_ecdsa"], args.skip + args.seconds + 1.5,
                           args.resumed, 3, "/small")
                if time.monotonic() - started < args.skip + args.seconds + 0.5:
                    raise RuntimeError(f"{name}: the load ended before the profiled window did")
            finally:
                service.stop()
        for name in ("rproxyd", "tls_floor"):
            for path in sorted((work / "prof").glob(name + ".*")):
                _report(name, path, args.top)
    finally:
        origin.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        _profiled_run()
    else:
        sys.exit(main())
