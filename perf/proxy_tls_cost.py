"""TLS handshakes per rproxyd CPU-second on a proxy_protocol listener, against a plain TLS listener.

    python -m perf.proxy_tls_cost [--seconds 4] [--repeats 4] [--out perf/work/proxy_tls]

A listener with proxy_protocol reads the PROXY header itself and then hands the socket to
uvloop (appliance/http/proxy_accept.py); a plain TLS listener is a uvloop TLS server. The
harness's TLS scenarios use openssl s_time, which cannot send a PROXY header, so HAProxy in
TCP mode sits in front of both listeners: with `send-proxy` before the proxy_protocol one,
without before the other. Only rproxyd's CPU (supervisor and its one worker, from /proc)
is counted; the runs alternate (plain, proxy, plain, proxy, ...) and the medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from perf.load import run_s_time
from perf.proxies import make_certs, make_docroot, origin_service
from perf.tools import Service, cpu_seconds_between, cpu_ticks, free_port, plan_cpus, process_tree, which

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "perf/work/proxy_tls")
    args = parser.parse_args()
    work = args.out
    (work / "run").mkdir(parents=True, exist_ok=True)
    certs = make_certs(work)
    cpus = plan_cpus(1)
    origin = origin_service(work, make_docroot(work), cpus, which("nginx") or "nginx", 1)
    origin_port = origin.port
    plain, proxied, front_plain, front_proxied = (free_port() for _ in range(4))
    listener = """
[[listener]]
name = "{name}"
bind = "127.0.0.1:{port}"
proxy_protocol = {pp}
[listener.tls]
enabled = true
certificate = "{cert}"
certificate_key = "{key}"
"""
    (work / "rproxy.toml").write_text(f"""
[process]
workers = 1
runtime_dir = "{work}/run"
[log]
file = "{work}/run/rproxyd.log"
[proxy]
trusted_proxies = ["127.0.0.1/32"]
[backend.origin]
servers = ["127.0.0.1:{origin_port}"]
[[vhost]]
name = "default"
[[vhost.route]]
backend = "origin"
""" + "".join(listener.format(name=name, port=port, pp=pp, cert=certs.ec_cert, key=certs.ec_key)
              for name, port, pp in (("plain", plain, "false"), ("proxied", proxied, "true"))))
    (work / "haproxy.cfg").write_text(f"""
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
listen plain
    bind 127.0.0.1:{front_plain}
    server rproxyd 127.0.0.1:{plain}
listen proxied
    bind 127.0.0.1:{front_proxied}
    server rproxyd 127.0.0.1:{proxied} send-proxy
""")
    front = Service("haproxy", cpus.wrap_load(["haproxy", "-f", str(work / "haproxy.cfg"), "-db"]),
                    front_plain, work / "logs/haproxy.log", extra_ports={"proxied": front_proxied})
    rproxyd = Service("rproxyd", cpus.wrap_proxy([sys.executable, "-m", "appliance", "-c",
                                                  str(work / "rproxy.toml")]),
                      plain, work / "logs/rproxyd.log", extra_ports={"proxied": proxied})
    services = [origin, front, rproxyd]
    try:
        for service in services:
            service.start()
        rates: dict[str, list[float]] = {"plain": [], "proxied": []}
        for _ in range(args.repeats):
            for name, port in (("plain", front_plain), ("proxied", front_proxied)):
                before = cpu_ticks(process_tree(rproxyd.pid))
                result = run_s_time(cpus, port, args.seconds, False, 3, "/small")
                spent = cpu_seconds_between(before, cpu_ticks(process_tree(rproxyd.pid)))
                rates[name].append(result["handshakes"] / spent)
                print(f"{name:8} {result['handshakes']:6d} handshakes, {spent:.2f} rproxyd CPU-s, "
                      f"{rates[name][-1]:.0f}/CPU-s", flush=True)
        plain_rate, proxied_rate = (statistics.median(rates[n]) for n in ("plain", "proxied"))
        print(f"median handshakes per rproxyd CPU-second: plain TLS listener {plain_rate:.0f}, "
              f"proxy_protocol TLS listener {proxied_rate:.0f} ({proxied_rate / plain_rate:.2f}x)")
    finally:
        for service in services:
            service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
