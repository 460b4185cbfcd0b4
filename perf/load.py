"""Load generators: wrk (throughput), h2load (fixed offered rate; h2 throughput), openssl s_time
(TLS), idle client, slow header senders with a latency probe (timeout bursts).

Each returns a dict of raw figures for one run: requests, bytes, seconds, errors, p50_ms, p99_ms,
plus generator-specific extras. The harness wraps every call with /proc CPU snapshots.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .tools import CpuPlan, run_capture

PROBE_INTERVAL_MS = 10  # the timeout-burst probe's request spacing
# The timeout-burst window starts this long after the last dribbled line (its reads are done by
# then) and ends this long after the last slow connection ended (its close is done by then).
BURST_MARGIN_S = 0.25

WRK_REPORT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(work: Path, body_bytes: int = 0, close: bool = False) -> Path:
    lua = work / f"wrk-{body_bytes}-{int(close)}.lua"
    pre = ""
    if body_bytes:
        pre += f'wrk.method = "POST"\nwrk.body = string.rep("u", {body_bytes})\n'
        pre += 'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    if close:
        pre += 'wrk.headers["Connection"] = "close"\n'
    lua.write_text(pre + WRK_REPORT)
    return lua


def run_wrk(cpus: CpuPlan, url: str, conns: int, seconds: float, script: Path, body_bytes: int = 0) -> dict:
    argv = cpus.wrap_load(["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                           "-s", str(script), url])
    r = run_capture(argv, timeout=seconds + 60)
    m = re.search(r"WRKJSON (\{.*\})", r.stdout)
    if not m:
        raise RuntimeError(f"wrk gave no report (rc {r.returncode}): {r.stderr.strip()[:300]}")
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    errors = {k: d[k] for k in ("connect", "read", "write", "timeout") if d[k]}
    if d["status"]:
        errors["non_2xx"] = d["status"]
    return {
        "requests": d["requests"],
        # Upload scenarios count the request bodies sent as the work done.
        "bytes": d["bytes"] + d["requests"] * body_bytes,
        "seconds": secs,
        "errors": errors,
        "p50_ms": d["p50_us"] / 1000,
        "p99_ms": d["p99_us"] / 1000,
    }


def run_h2load_rate(cpus: CpuPlan, url: str, rate: int, clients: int, seconds: float, log: Path) -> dict:
    """Fixed offered load: `clients` HTTP/1.1 connections, each at rate/clients requests per second."""
    per_client = max(1, rate // clients)
    log.unlink(missing_ok=True)
    argv = cpus.wrap_load(["h2load", "--h1", "-t1", f"-c{clients}", f"--rps={per_client}",
                           f"-D{max(1, round(seconds))}", "--warm-up-time=1", f"--log-file={log}", url])
    r = run_capture(argv, timeout=seconds + 60)
    durations, bad = [], 0
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            if not parts[1].startswith("2"):
                bad += 1
            durations.append(int(parts[2]) / 1000)
    if not durations:
        raise RuntimeError(f"h2load recorded no requests (rc {r.returncode}): {r.stdout[-300:]}")
    durations.sort()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", r.stdout)
    errors = {}
    if bad:
        errors["non_2xx"] = bad
    if m and int(m.group(5)):
        errors["failed"] = int(m.group(5))
    tm = re.search(r"traffic: .*?\((\d+)\) total", r.stdout)
    total_bytes = int(tm.group(1)) if tm else 0
    return {
        "requests": len(durations),
        "bytes": total_bytes,
        "seconds": float(max(1, round(seconds))),
        "errors": errors,
        "p50_ms": _pct(durations, 50),
        "p99_ms": _pct(durations, 99),
        "offered_rps": per_client * clients,
    }


def run_h2load(cpus: CpuPlan, url: str, conns: int, streams: int, seconds: float, body: Path | None = None,
               headers: tuple[str, ...] = ()) -> dict:
    """h2 throughput: `conns` connections with `streams` requests in flight on each, for `seconds`.

    An http:// URL is h2c by prior knowledge, an https:// one h2 negotiated by ALPN; a run that
    did not speak h2 (the server chose HTTP/1.1) is an error, not a figure. With `body`, every
    request is a POST of that file (`-d`: the gRPC scenario's message).
    """
    argv = ["h2load", "-t1", f"-c{conns}", f"-m{streams}", f"-D{max(1, round(seconds))}"]
    if body is not None:
        argv += ["-d", str(body)]
    for h in headers:
        argv += ["-H", h]
    r = run_capture(cpus.wrap_load([*argv, url]), timeout=seconds + 60)
    # h2load names the protocol it spoke: h2c by prior knowledge on plaintext, what ALPN chose on TLS.
    proto = re.search(r"Application protocol: (\S+)", r.stdout)
    if not proto or proto.group(1) != ("h2c" if url.startswith("http:") else "h2"):
        raise RuntimeError(f"h2load did not speak h2 (rc {r.returncode}): "
                           f"{(r.stdout + r.stderr).strip()[-300:]}")
    fin = re.search(r"finished in ([\d.]+)(m?s),", r.stdout)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", r.stdout)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", r.stdout)
    traffic = re.search(r"traffic: .*?\((\d+)\) total", r.stdout)
    if not (fin and m and codes and traffic):
        raise RuntimeError(f"h2load gave no report (rc {r.returncode}): {r.stdout.strip()[-300:]}")
    secs = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
    errors = {k: int(m.group(i)) for k, i in (("failed", 5), ("errored", 6), ("timeout", 7))
              if int(m.group(i))}
    non_2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
    if non_2xx:
        errors["non_2xx"] = non_2xx
    return {
        # Requests answered 2xx: h2load counts a 5xx as succeeded.
        "requests": int(codes.group(1)),
        "bytes": int(traffic.group(1)),
        "seconds": secs,
        "errors": errors,
        "p50_ms": None,
        "p99_ms": None,
    }


def grpc_call_status(url: str, body: Path, headers: tuple[str, ...]) -> str:
    """One gRPC call with nghttp (not timed): its grpc-status, or what came instead."""
    argv = ["nghttp", "-v", "-n", "-d", str(body)]
    for h in headers:
        argv += ["-H", h]
    try:
        r = run_capture([*argv, url], timeout=20)
    except subprocess.TimeoutExpired:
        return "no answer in 20 s"
    m = re.search(r"recv \(stream_id=\d+\) grpc-status: (\S+)", r.stdout)
    if m:
        return m.group(1)
    status = re.search(r"recv \(stream_id=\d+\) :status: (\d+)", r.stdout)
    return f"no grpc-status (HTTP status {status.group(1) if status else 'none'}, nghttp rc {r.returncode})"


def _pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(p / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def run_s_time(cpus: CpuPlan, port: int, seconds: float, resumed: bool, parallel: int, path: str) -> dict:
    """TLS handshakes (each with one small GET) with `parallel` openssl s_time clients.

    Full handshakes: s_time -new. Resumed: s_time -reuse, which resumes the session (TLS 1.3
    tickets) of its first connection; each resumed connection prints 'r', each full one '*'.
    """
    secs = max(1, round(seconds))
    argv = cpus.wrap_load(["openssl", "s_time", "-connect", f"127.0.0.1:{port}",
                           "-reuse" if resumed else "-new", "-time", str(secs), "-www", path])
    t0 = time.monotonic()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(parallel)]
    outs = [p.communicate(timeout=secs + 60)[0] for p in procs]
    wall = time.monotonic() - t0
    conns = reused = full = 0
    for out in outs:
        m = re.search(r"(\d+) connections in [\d.]+s;", out)
        if not m:
            raise RuntimeError(f"s_time gave no result: {out[-300:]}")
        conns += int(m.group(1))
        marks = out.split("Now timing with session id reuse.")[-1] if resumed else out
        lines = [ln for ln in marks.splitlines() if ln and set(ln) <= {"r", "*"}]
        reused += sum(ln.count("r") for ln in lines)
        full += sum(ln.count("*") for ln in lines)
    res = {
        "requests": conns,
        "bytes": 0,
        "seconds": wall,
        "errors": {},
        "p50_ms": None,
        "p99_ms": None,
        "handshakes": conns,
    }
    if resumed:
        res["resumed_pct"] = round(100 * reused / max(1, reused + full), 2)
    return res


def run_idle(cpus: CpuPlan, port: int, count: int, rss_of, settle_s: float = 1.0) -> dict:
    """Hold `count` idle keep-alive connections (each served one request); RSS growth per connection.

    rss_of() returns the proxy's total RSS in KiB; it is read before and while the connections are held.
    """
    script = Path(__file__).with_name("idle_client.py")
    time.sleep(0.3)
    before = rss_of()
    t0 = time.monotonic()
    proc = subprocess.Popen(cpus.wrap_load([sys.executable, str(script), str(port), str(count), "/small"]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        opened = time.monotonic() - t0
        if not line:
            raise RuntimeError(f"idle client failed: {proc.stderr.read()[-300:] if proc.stderr else ''}")
        stats = json.loads(line)
        time.sleep(settle_s)
        samples = [rss_of()]
        time.sleep(0.3)
        samples.append(rss_of())
        after = statistics.median(samples)
        proc.stdin.close()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ready = stats["ready"]
    errors = {}
    if stats["failed"]:
        errors["failed"] = stats["failed"]
    if stats["non_2xx"]:
        errors["non_2xx"] = stats["non_2xx"]
    return {
        "requests": ready,
        "bytes": 0,
        "seconds": opened,
        "errors": errors,
        "p50_ms": None,
        "p99_ms": None,
        "idle_conns": ready,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_per_conn_kib": round((after - before) / ready, 3) if ready else None,
    }


def run_timeout_burst(cpus: CpuPlan, port: int, count: int, header_timeout: float, dribble: float) -> dict:
    """`count` slow header senders all hitting the header timeout, and a keep-alive probe beside them.

    The figure is the worker's stall: the longest probe request whose send time falls in the
    expiry window, from the last round of dribbled lines before the first timeout (plus a
    margin: the proxy reads them) until the last slow connection ended. The probe and the slow client
    are separate processes, so neither's own event loop delays the other.
    """
    here = Path(__file__).parent
    probe = subprocess.Popen(cpus.wrap_load([sys.executable, str(here / "probe.py"), str(port), "/small",
                                             str(PROBE_INTERVAL_MS)]),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    slow = None
    try:
        assert probe.stdin is not None and probe.stdout is not None
        if probe.stdout.readline().strip() != "ready":
            raise RuntimeError(f"probe failed: {probe.stderr.read()[-300:] if probe.stderr else ''}")
        time.sleep(0.5)  # a baseline before the slow clients arrive
        give_up = header_timeout + 15
        slow = subprocess.run(cpus.wrap_load([sys.executable, str(here / "slow_headers.py"), str(port),
                                              str(count), str(dribble), str(give_up)]),
                              capture_output=True, text=True, timeout=give_up + 30, check=False)
        if not slow.stdout.strip():
            raise RuntimeError(f"slow client failed (rc {slow.returncode}): {slow.stderr[-300:]}")
        ends = json.loads(slow.stdout.splitlines()[-1])
        time.sleep(0.3)
        probe.stdin.close()  # the probe's signal to stop and report
        out = probe.stdout.read()
        probe.wait(30)
        if not out.strip():
            raise RuntimeError(f"probe gave no samples: {probe.stderr.read()[-300:] if probe.stderr else ''}")
        probed = json.loads(out.splitlines()[-1])
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    window = (ends["dribbled_last"] + BURST_MARGIN_S, ends["ended_last"] + BURST_MARGIN_S)
    inside = [ms for sent, ms in probed["samples"] if window[0] <= sent <= window[1]]
    # The first request is left out: the proxy may open its backend connection for it.
    before = [ms for sent, ms in probed["samples"][1:] if sent < ends["started"]]
    errors = {k: ends[k] for k in ("answered_other", "reset", "connect_failed", "still_open") if ends[k]}
    if probed["failed"]:
        errors["probe_failed"] = probed["failed"]
    return {
        "requests": len(probed["samples"]),
        "bytes": 0,
        "seconds": ends["ended_last"] - ends["started"],
        "errors": errors,
        "p50_ms": statistics.median(inside) if inside else None,
        "p99_ms": None,
        "stall_ms": max(inside) if inside else None,
        "baseline_ms": max(before) if before else None,
        "slow_conns": count,
        "probe_realtime": probed["realtime"],
        "answered_408": ends["answered_408"],
        "closed": ends["closed"],
        "open_spread_ms": round((ends["opened_last"] - ends["opened_first"]) * 1000, 1),
        "expiry_spread_ms": round((ends["ended_last"] - ends["ended_first"]) * 1000, 1),
    }


def _run_ws_load(cpus: CpuPlan, args: list[str], timeout: float) -> dict:
    argv = cpus.wrap_load([sys.executable, str(Path(__file__).with_name("ws_load.py")), *args])
    r = run_capture(argv, timeout=timeout)
    m = re.search(r"WSJSON (\{.*\})", r.stdout)
    if not m:
        raise RuntimeError(f"ws_load gave no report (rc {r.returncode}): {r.stderr.strip()[-300:]}")
    return {**json.loads(m.group(1)), "p50_ms": None, "p99_ms": None}


def run_ws_echo(cpus: CpuPlan, port: int, conns: int, seconds: float, size: int, window: int) -> dict:
    """WebSocket echo: `conns` tunnels, `window` messages of `size` bytes in flight on each;
    requests = messages echoed."""
    return _run_ws_load(cpus, ["echo", str(port), str(conns), str(seconds), str(size), str(window)],
                        seconds + 60)


def run_tunnel_bulk(cpus: CpuPlan, port: int, total: int) -> dict:
    """`total` bytes through one tunnel, client to origin; bytes = total."""
    return _run_ws_load(cpus, ["bulk", str(port), str(total)], 300)
