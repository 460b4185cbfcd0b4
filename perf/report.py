"""Writes perf/RESULTS.md, perf/results.json and perf/results.png from one run's rows."""

from __future__ import annotations

import json
from pathlib import Path

PROXY_NAMES = {"direct": "direct (no proxy)", "nginx": "nginx", "haproxy": "HAProxy", "rproxyd": "rproxyd",
               "tls_floor": "uvloop TLS floor (no proxying)",
               "tls_relay_floor": "uvloop TLS relay floor (the floor + a pooled backend round trip)",
               "rproxyd_phases": "rproxyd + phases",
               "rproxyd_pure": "rproxyd, pure Python build"}
# A scenario's baseline other than nginx, as its ratios are written ("0.80x of the TLS floor").
BASELINE_NAMES = {"rproxyd": "plain rproxyd", "tls_floor": "the TLS floor"}


def write_all(out: Path, meta: dict, rows: list[dict], scenarios: list) -> None:
    titles = {s.name: s for s in scenarios}
    (out / "results.json").write_text(json.dumps({**meta, "results": rows}, indent=2, default=str) + "\n")
    chart = write_chart(out / "results.png", rows, titles)
    (out / "RESULTS.md").write_text(markdown(meta, rows, titles, chart))


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _work(row: dict) -> str:
    v = row.get("per_cpu_s")
    if v is None:
        return "-"
    if row["metric"].startswith("bytes"):
        return f"{v / 1e6:,.0f} MB"
    return f"{v:,.0f} req"


def _target_row(sc, rows: list[dict]) -> tuple[str, str, str, str, str]:
    if sc.baseline != "nginx":
        return _baseline_target_row(sc, rows)
    r = next((x for x in rows if x["proxy"] == "rproxyd"), None)
    if r is None:
        return sc.target_text, "-", "-", "-", "not run"
    if r["status"] != "ok":
        return sc.target_text, "-", "-", "-", f"**{r['status']}**: {r.get('note', '')}"
    if sc.metric == "rss":
        v = r.get("rss_per_conn_kib")
        nginx = next((x.get("rss_per_conn_kib") for x in rows if x["proxy"] == "nginx"), None)
        met = v is not None and v <= sc.target
        got = _num(v, "{:.2f} KiB") + ("" if nginx is None else f" ({_ratio(r.get('vs_nginx'))} nginx's "
                                                            f"{nginx:.2f} KiB)")
        return (sc.target_text, got, f"<= {sc.target:.1f} KiB", _ratio(r.get("vs_haproxy")),
                "yes" if met else "**no**")
    v = r.get("vs_nginx")
    if v is None:
        return sc.target_text, "-", "-", "-", "no nginx figure"
    met = v >= sc.target if sc.higher_is_better else v <= sc.target
    extra = ""
    if "resumed_pct" in r:
        extra = f", resumed {r['resumed_pct']:.0f}%"
        met = met and r["resumed_pct"] >= 100
    need = f"{'>=' if sc.higher_is_better else '<='} {sc.target:.1f}x"
    return (sc.target_text, _ratio(v) + extra, need, _ratio(r.get("vs_haproxy")),
            "yes" if met else f"**no** (gap {v / sc.target:.2f} of target)" if sc.higher_is_better
            else f"**no** ({v / sc.target:.2f}x the limit)")


def _baseline_target_row(sc, rows: list[dict]) -> tuple[str, str, str, str, str]:
    """A target that is a ratio to another proxy than nginx in the same run: rproxyd's (or its
    variant's) figure over plain rproxyd's or the TLS floor's, with the nginx ratio beside it."""
    r = next((x for x in rows if x["proxy"] == (sc.variant or "rproxyd")), None)
    v = None if r is None else r.get(f"vs_{sc.baseline}")
    if v is None:
        return sc.target_text, "-", "-", "-", "not run" if r is None else f"**{r['status']}**"
    met = v >= sc.target
    got = f"{_ratio(v)} of {BASELINE_NAMES[sc.baseline]}"
    if r.get("vs_nginx") is not None:
        got += f" ({_ratio(r['vs_nginx'])} nginx)"
    if "resumed_pct" in r:
        got += f", resumed {r['resumed_pct']:.0f}%"
        met = met and r["resumed_pct"] >= 100
    return (sc.target_text, got, f">= {sc.target:.2f}x", _ratio(r.get("vs_haproxy")),
            "yes" if met else f"**no** (gap {v / sc.target:.2f} of target)")


def markdown(meta: dict, rows: list[dict], titles: dict, chart: bool) -> str:
    m, s = meta["machine"], meta["settings"]
    out = [
        "# rproxyd benchmark results",
        "",
        f"Written by `{'make bench-quick' if s['quick'] else 'make bench'}` (`perf/run`) on "
        f"{meta['date']}; every run rewrites this file. How it works: [README.md](README.md).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores ({m['usable_cpus']} usable), {m['mem_gib']} GiB RAM",
        f"- OS: {m['os']}, kernel {m['kernel']}",
        f"- rproxyd {m['rproxyd']}, Python {m['python']}, uvloop {m['uvloop']}, httptools {m['httptools']}",
        f"- nginx {m['nginx']}, HAProxy {m['haproxy']}, {m['wrk']}, {m['h2load']}, {m['openssl']}",
        "",
        "## Setup",
        "",
        f"- {s['workers']} worker per proxy (nginx `worker_processes`, HAProxy `nbthread`, rproxyd's single "
        f"worker); {s['cpu_plan']}.",
        f"- Origin: nginx ({s['workers']} worker, static files, sendfile). Every proxy keeps a pool of "
        f"{s['pool']} keep-alive connections to it, streams bodies without disk buffering, and has access "
        f"logs {s['access_logs'].replace(' for all', '')} (all of them).",
        f"- Each scenario: {s['repeats']} runs of {s['duration_s']:g} s per proxy, interleaved across "
        f"proxies after {s['warmup_s']:g} s of warm-up; the table shows the median. Whole run: "
        f"{s['elapsed_s']:.0f} s.",
        f"- Latency scenario: {s['latency_rate_rps']:,} requests/s offered to every proxy (h2load, 32 "
        f"connections). Idle scenario: {s['idle_connections']:,} connections. TLS: {s['tls_clients']} "
        "parallel `openssl s_time` clients, TLS 1.3, one small GET per connection.",
        "- **Work per CPU-second** is the primary figure: requests (or bytes) divided by the utime+stime "
        "of the proxy's own processes, read from /proc/PID/stat before and after each run. "
        "Ratios compare it with nginx and HAProxy measured in the same run (for p99 and RSS, lower "
        "is better and the ratio is rproxyd's figure over theirs).",
        "",
        "## Targets",
        "",
        "| Scenario | Target | rproxyd vs nginx (or the target's baseline) | needed | rproxyd vs HAProxy "
        "| met |",
        "|---|---|---|---|---|---|",
    ]
    for name, sc in titles.items():
        srows = [r for r in rows if r["scenario"] == name]
        if not srows or sc.target is None:
            continue
        text, got, need, vh, met = _target_row(sc, srows)
        out.append(f"| {sc.title} | {text} | {got} | {need} | {vh} | {met} |")
    out += [
        "",
        "TLS targets are ratios to the TLS floor in the same run (issue 15); resumption must be "
        "100% across workers. The relay floor (the floor plus one pooled backend round trip, "
        "perf/tls_floor.py --relay) shows what a bare round trip costs on the same runtime: the "
        "results give every proxy's ratio to both.",
        "",
        "## Results",
        "",
        "| Scenario | Proxy | req/s | MB/s | proxy CPU s | work per CPU-s | p50 ms | p99 ms "
        "| vs nginx | vs HAProxy | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, sc in titles.items():
        for r in (x for x in rows if x["scenario"] == name):
            notes = []
            if r["status"] not in ("ok",):
                notes.append(f"**{r['status']}**")
            if r.get("note"):
                notes.append(r["note"].replace("|", "/").replace("\n", " ")[:220])
            if r.get("errors"):
                notes.append("errors: " + ", ".join(f"{k} {v}" for k, v in r["errors"].items()))
            if r.get("rss_per_conn_kib") is not None:
                notes.append(f"{r['rss_per_conn_kib']:.2f} KiB RSS/conn over {r.get('idle_conns', 0):,.0f}")
            if r.get("resumed_pct") is not None:
                notes.append(f"resumed {r['resumed_pct']:.0f}%")
            if r.get("stall_ms") is not None:
                notes.append(f"stall {r['stall_ms']:.1f} ms (before the burst {r['baseline_ms']:.1f}) over "
                             f"{r['slow_conns']:,.0f} slow clients: {r['answered_408']:,.0f} got 408, "
                             f"{r['closed']:,.0f} closed"
                             + ("" if r.get("probe_realtime") else " (probe not real-time: its own "
                                "scheduling is in the figure)"))
            if sc.baseline in BASELINE_NAMES and r.get(f"vs_{sc.baseline}") is not None:
                notes.append(f"{r[f'vs_{sc.baseline}']:.2f}x {BASELINE_NAMES[sc.baseline]}")
            if r.get("vs_tls_relay_floor") is not None:
                notes.append(f"{r['vs_tls_relay_floor']:.2f}x the relay floor")
            if r["proxy"] in sc.beside and r.get("vs_rproxyd") is not None:  # e.g. the pure build's
                notes.append(f"{r['vs_rproxyd']:.2f}x rproxyd")
            if r.get("offered_rps"):
                notes.append(f"offered {r['offered_rps']:,.0f}/s")
            work = _work(r) if r["status"] == "ok" or r.get("per_cpu_s") else "-"
            mbs = None if r.get("bytes_per_s") is None else r["bytes_per_s"] / 1e6
            out.append(
                f"| {sc.title} | {PROXY_NAMES[r['proxy']]} | {_num(r.get('rps'))} | {_num(mbs, '{:,.1f}')} "
                f"| {_num(r.get('cpu_s'), '{:.2f}')} | {work} | {_num(r.get('p50_ms'), '{:.2f}')} "
                f"| {_num(r.get('p99_ms'), '{:.2f}')} | {_ratio(r.get('vs_nginx'))} "
                f"| {_ratio(r.get('vs_haproxy'))} | {'; '.join(notes)} |"
            )
    out += _breakdown_section(rows, titles)
    out += _syscalls_section(rows, titles)
    if meta.get("failures"):
        out += ["", "## Failures", ""]
        out += [f"- {f.splitlines()[0][:400]}" for f in meta["failures"]]
    if meta.get("notes"):
        out += ["", "## Notes", ""]
        out += [f"- {k}: {v}" for k, v in meta["notes"].items()]
    if chart:
        out += ["", "## Chart", "", "![rproxyd and HAProxy relative to nginx](results.png)"]
    out += ["", "Raw figures, every run's median and the settings: [results.json](results.json).", ""]
    return "\n".join(out)


def _breakdown_section(rows: list[dict], titles: dict) -> list[str]:
    """`perf/run --breakdown`: each proxy's CPU per request split by where it runs."""
    recorded = [r for r in rows if r.get("cpu_breakdown")]
    if not recorded:
        return []
    out = ["", "## Where the CPU goes (`--breakdown`)", "",
           "perf samples of the proxy's processes during the measured runs, by shared object "
           "(perf/breakdown.py), times the CPU per request (per MiB in the byte scenarios); medians "
           "of the runs. Own code: nginx's or HAProxy's binary; for the Python ones the interpreter, "
           "uvloop, httptools and the C ticket callback. Of the kernel's part, waking peers: the "
           "wake-ups of the processes waiting on the other ends of the sockets (an inter-processor "
           "interrupt when their CPU sleeps).", "",
           "| Scenario | Proxy | unit | total | OpenSSL | kernel | of it waking peers | libc | own code "
           "| largest parts of the own code |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, sc in titles.items():
        for r in (x for x in recorded if x["scenario"] == name):
            b = r["cpu_breakdown"]
            p = b["parts"]
            values = (p["OpenSSL"], p["kernel"], b.get("kernel_waking"), p["libc"], p["own code"])
            parts = [_num(v, "{:,.1f}") for v in values]
            largest = ", ".join(f"{dso} {_num(v, '{:,.1f}')}" for dso, v in list(b["own_code"].items())[:3])
            total = _num(b["total"], "{:,.1f}")
            out.append(f"| {sc.title} | {PROXY_NAMES[r['proxy']]} | {b['unit']} | {total} "
                       f"| {' | '.join(parts)} | {largest} |")
    return out


def _syscalls_section(rows: list[dict], titles: dict) -> list[str]:
    """`perf/run --syscalls`: each proxy's system calls per request, call by call."""
    counted = [r for r in rows if r.get("syscalls")]
    if not counted:
        return []
    out = ["", "## System calls (`--syscalls`)", "",
           "Entries of each system call by the proxy's processes during the measured runs (perf stat "
           "on the syscall tracepoints, perf/syscalls.py), per request (per MiB in the byte scenarios); "
           "medians of the runs; calls under 0.01 per unit left out.", "",
           "| Scenario | Proxy | unit | total | calls |", "|---|---|---|---:|---|"]
    for name, sc in titles.items():
        for r in (x for x in counted if x["scenario"] == name):
            s = r["syscalls"]
            calls = ", ".join(f"{call} {v:.2f}" for call, v in s["calls"].items()
                              if call != "total" and v >= 0.01)
            out.append(f"| {sc.title} | {PROXY_NAMES[r['proxy']]} | {s['unit']} "
                       f"| {_num(s['calls']['total'], '{:.2f}')} | {calls} |")
    return out


def write_chart(path: Path, rows: list[dict], titles: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing (pip install -e '.[bench]'): no chart", flush=True)
        return False
    labels, series = [], {"rproxyd vs nginx": [], "rproxyd vs HAProxy": [], "HAProxy vs nginx": []}
    targets = []
    for name, sc in titles.items():
        srows = {r["proxy"]: r for r in rows if r["scenario"] == name}
        if not srows or sc.variant:  # an rproxyd-only scenario has no nginx to compare with
            continue
        rp, hp = srows.get("rproxyd", {}), srows.get("haproxy", {})
        suffix = "" if sc.higher_is_better else "\n(lower is better)"
        labels.append(sc.title + suffix)
        series["rproxyd vs nginx"].append(rp.get("vs_nginx"))
        series["rproxyd vs HAProxy"].append(rp.get("vs_haproxy"))
        series["HAProxy vs nginx"].append(hp.get("vs_nginx"))
        # The black mark is a target vs nginx: none for KiB or a ratio to another baseline.
        targets.append(sc.target if sc.metric != "rss" and sc.baseline == "nginx" else None)
    if not labels:
        return False
    fig, ax = plt.subplots(figsize=(12, 0.75 * len(labels) + 1.8))
    h = 0.26
    colors = {"rproxyd vs nginx": "#d62728", "rproxyd vs HAProxy": "#ff9896", "HAProxy vs nginx": "#7f7f7f"}
    for i, (name, vals) in enumerate(series.items()):
        ys = [j + (i - 1) * h for j in range(len(labels))]
        xs = [v if v is not None else 0 for v in vals]
        bars = ax.barh(ys, xs, height=h, label=name, color=colors[name])
        for b, v in zip(bars, vals, strict=True):
            ax.text(b.get_width() + 0.02, b.get_y() + h / 2, "n/a" if v is None else f"{v:.2f}",
                    va="center", fontsize=7)
    for j, t in enumerate(targets):
        if t is not None:
            ax.plot([t, t], [j - 1.5 * h, j + 1.5 * h], color="black", lw=2)
    ax.plot([], [], color="black", lw=2, label="rproxyd target vs nginx")
    ax.axvline(1.0, color="#333", lw=0.8, ls="--")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio of work per CPU-second of the proxy's processes (p99 and RSS: ratio of the figure)")
    ax.set_title("rproxyd relative to nginx and HAProxy (same run, same machine)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
