"""Configurations and launchers: nginx as the origin; nginx, HAProxy and rproxyd as proxies;
the TLS calibration (perf/tls_floor.py).

Every proxy is set up the same way: `workers` processes/threads, access logs off, a
keep-alive pool of POOL connections to the one origin, streamed (unbuffered-to-disk) bodies,
75 s client keep-alive, no request-count limit per connection, and the same three listeners:
plain HTTP, TLS with an ECDSA P-256 certificate and TLS with an RSA-2048 certificate.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .tools import CpuPlan, Service, free_port, log

POOL = 64  # keep-alive connections to the origin, per worker (>= the highest load concurrency)
KEEPALIVE_S = 75
# Header timeout of every proxy (nginx client_header_timeout, HAProxy timeout http-request,
# rproxyd header_timeout); the timeout-burst scenarios wait it out once per run.
HEADER_TIMEOUT_S = 5
# Listen backlog of every proxy listener: the timeout-burst scenarios connect 2,000 clients
# faster than a busy proxy accepts them, and a full queue drops SYNs (retried 1 s later).
BACKLOG = 4096
SMALL_BYTES = 128
ONE_MIB = 1 << 20
# /100b: the h2 scenarios' small body (issue 17 measured h2 with 100-byte bodies).
FILES = {"small": SMALL_BYTES, "100b": 100, "1m": ONE_MIB, "100m": 100 * ONE_MIB}
# gRPC (grpc_unary): the method every proxy routes to the origin's h2c listener, and the size
# of the protobuf message in each direction (the request file and the origin's answer are
# one length-prefixed message each: a 0 compression flag, a 4-byte big-endian length).
GRPC_PREFIX = "/bench.Echo/"
GRPC_PATH = GRPC_PREFIX + "Unary"
GRPC_MESSAGE_BYTES = 100
GRPC_REQUEST_HEADERS = ("content-type: application/grpc", "te: trailers")
# Set by `perf/run --access-log`: every proxy writes an access log into this directory, each in
# its usual production shape (nginx buffered JSON, HAProxy httplog lines, rproxyd JSON batches).
ACCESS_LOG_DIR: Path | None = None
# Set by the harness once perf/ws_origin.py runs: every proxy routes /ws/ to it, WebSocket
# upgrades allowed (nginx's documented Upgrade/Connection lines, HAProxy's tunnel mode, rproxyd's
# default), with an hour of tunnel idle time for each.
WS_ORIGIN_PORT: int | None = None
TUNNEL_IDLE_S = 3600
# Set by the harness once the origin runs: its h2c (prior knowledge) port, which serves the
# docroot and answers gRPC calls under GRPC_PREFIX. Every proxy routes GRPC_PREFIX to it over h2
# (nginx grpc_pass, HAProxy `proto h2`, rproxyd `protocol = "h2"`).
ORIGIN_H2C_PORT: int | None = None


@dataclass
class Certs:
    ec_cert: Path
    ec_key: Path
    ec_pem: Path  # cert + key, for HAProxy
    rsa_cert: Path
    rsa_key: Path
    rsa_pem: Path


def make_docroot(work: Path) -> Path:
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    for name, size in FILES.items():
        p = www / name
        if not p.exists() or p.stat().st_size != size:
            block = (b"0123456789abcdef" * 4096)[: min(size, 65536)]
            with open(p, "wb") as f:
                left = size
                while left:
                    n = min(left, len(block))
                    f.write(block[:n])
                    left -= n
    (www / "upload").touch()  # POST /upload: the static handler needs a file to answer 405 for
    (www / "grpc_response").write_bytes(grpc_message(b"r"))
    return www


def grpc_message(fill: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message of GRPC_MESSAGE_BYTES (gRPC over HTTP/2)."""
    return b"\0" + GRPC_MESSAGE_BYTES.to_bytes(4, "big") + fill * GRPC_MESSAGE_BYTES


def grpc_request_file(work: Path) -> Path:
    """The body h2load sends on every gRPC call (`-d`)."""
    p = work / "grpc_request.bin"
    p.write_bytes(grpc_message(b"q"))
    return p


def make_certs(work: Path) -> Certs:
    """Self-signed ECDSA P-256 and RSA-2048 certificates for 127.0.0.1, made with openssl at run time."""
    d = work / "certs"
    d.mkdir(parents=True, exist_ok=True)
    subj = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    for kind, newkey in (("ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                         ("rsa", ["-newkey", "rsa:2048"])):
        crt, key = d / f"{kind}.crt", d / f"{kind}.key"
        subprocess.run(["openssl", "req", "-x509", "-nodes", *newkey, "-keyout", str(key), "-out", str(crt),
                        "-days", "2", *subj], check=True, capture_output=True)
        (d / f"{kind}.pem").write_bytes(crt.read_bytes() + key.read_bytes())
    return Certs(d / "ec.crt", d / "ec.key", d / "ec.pem", d / "rsa.crt", d / "rsa.key", d / "rsa.pem")


def _nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _conn_limit() -> int:
    """Connections each proxy may hold: the 10k idle clients plus headroom, within the fd limit.

    HAProxy refuses to start unless 2 fds per maxconn (+16) fit under the fd limit, so with a
    20000 hard limit (common in containers) no proxy is given more than ~9,980.
    """
    return max(1024, min(10_500, (_nofile() - 32) // 2))


def idle_connections() -> int:
    """How many idle keep-alive connections the idle scenario opens: 10k, or what the fd limit allows."""
    return min(10_000, _conn_limit() - 40)


def _nginx_common(work: Path, name: str, workers: int) -> str:
    tmp = work / "tmp" / name
    tmp.mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temps = "\n".join(f"    {k}_temp_path {tmp}/{k};" for k in
                      ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes {workers};
daemon off;
master_process on;
pid {work}/{name}.pid;
error_log {work}/logs/{name}-error.log warn;
events {{ worker_connections {_conn_limit() + 200}; }}
http {{
    access_log off;
    default_type application/octet-stream;
    types {{ }}
    keepalive_timeout {KEEPALIVE_S}s;
    keepalive_requests 100000000;
    tcp_nodelay on;
    server_tokens off;
{temps}
"""


def origin_service(work: Path, www: Path, cpus: CpuPlan, nginx: str, workers: int) -> Service:
    """nginx serving static files: /small (128 B), /100b, /1m, /100m; POST /upload reads the body and
    answers 200.

    A second listener speaks h2c (prior knowledge) for the h2 scenarios: the same files, and a
    gRPC server under GRPC_PREFIX that answers every call with one 100-byte message and the
    trailer `grpc-status: 0`. That answer is a static file (the static handler refuses POST with
    405, which error_page turns into a GET of the file with 200; nginx discards the request
    body) and `add_trailer`, so the origin costs what serving a small file over h2 costs, far
    below any proxy in front of it (a grpcio server would be the bottleneck itself).
    """
    port, h2c_port = free_port(), free_port()
    conf = work / "origin.conf"
    conf.write_text(_nginx_common(work, "origin", workers) + f"""
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        root {www};
        # The mirror module reads the whole request body before the content phase; the static
        # handler then refuses POST with 405, which error_page turns into GET /small with 200.
        location = /upload {{
            client_max_body_size 0;
            client_body_buffer_size 2m;
            mirror /_sink;
            mirror_request_body on;
            error_page 405 =200 /small;
        }}
        location = /_sink {{ internal; return 204; }}
    }}
    server {{
        listen 127.0.0.1:{h2c_port} http2 backlog=4096 reuseport;
        root {www};
        # The body is read whole first (mirror, as /upload): answering before it ended would
        # leave the client's DATA to a closed stream, which the origin answers with RST_STREAM
        # and nginx's grpc_pass counts as an error ("upstream sent frame for unknown stream").
        location {GRPC_PREFIX} {{
            mirror /_sink;
            mirror_request_body on;
            try_files /grpc_response =404;
            error_page 405 =200 /_grpc_response;
        }}
        location = /_sink {{ internal; return 204; }}
        location = /_grpc_response {{
            internal;
            try_files /grpc_response =404;
            default_type application/grpc;
            etag off;
            if_modified_since off;
            add_trailer grpc-status 0 always;
        }}
    }}
}}
""")
    return Service("origin", cpus.wrap_load([nginx, "-c", str(conf)]), port, work / "logs" / "origin.log",
                   extra_ports={"h2c": h2c_port, "grpc": h2c_port})


def ws_origin_service(work: Path, cpus: CpuPlan) -> Service:
    """perf/ws_origin.py: a 101 to any handshake, then /ws/echo echoes and /ws/sink/N swallows N bytes."""
    port = free_port()
    argv = [sys.executable, str(Path(__file__).with_name("ws_origin.py")), str(port)]
    return Service("ws_origin", cpus.wrap_load(argv), port, work / "logs" / "ws_origin.log")


def nginx_service(work: Path, origin_port: int, certs: Certs, cpus: CpuPlan, nginx: str,
                  workers: int) -> Service:
    port, ec_port, rsa_port, h2c_port, h2_tls_port = (free_port() for _ in range(5))
    conf = work / "nginx-proxy.conf"
    location = """
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering on;
            proxy_buffer_size 16k;
            proxy_buffers 16 16k;
            proxy_busy_buffers_size 64k;
            proxy_max_temp_file_size 0;
            proxy_connect_timeout 5s;
            proxy_read_timeout 60s;
            proxy_send_timeout 60s;
        }"""
    ws_upstream = ""
    if WS_ORIGIN_PORT is not None:
        ws_upstream = f"    upstream ws_origin {{ server 127.0.0.1:{WS_ORIGIN_PORT}; }}\n"
        location += f"""
        location /ws/ {{
            proxy_pass http://ws_origin;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout {TUNNEL_IDLE_S}s;
            proxy_send_timeout {TUNNEL_IDLE_S}s;
        }}"""
    # h2 listeners (issue 17): h2c by prior knowledge and h2 over TLS (ALPN), apart from the
    # HTTP/1 ones (`http2` on a listen applies to every server on that address); gRPC goes to
    # the origin's h2c listener through grpc_pass, nginx's h2 upstream.
    h2_location = location
    grpc_upstream = ""
    if ORIGIN_H2C_PORT is not None:
        grpc_upstream = (f"    upstream grpc_origin {{ server 127.0.0.1:{ORIGIN_H2C_PORT}; keepalive {POOL}; "
                         f"keepalive_requests 100000000; keepalive_timeout {KEEPALIVE_S}s; }}\n")
        h2_location += f"""
        location {GRPC_PREFIX} {{
            grpc_pass grpc://grpc_origin;
            grpc_connect_timeout 5s;
            grpc_read_timeout 60s;
            grpc_send_timeout 60s;
        }}"""
    access = ""
    if ACCESS_LOG_DIR is not None:
        access = f"""
    log_format json escape=json '{{"time":"$time_iso8601","client":"$remote_addr:$remote_port",'
        '"method":"$request_method","path":"$request_uri","protocol":"$server_protocol",'
        '"status":$status,"bytes_in":$request_length,"bytes_out":$bytes_sent,'
        '"server":"$upstream_addr","connect_time":"$upstream_connect_time",'
        '"first_byte_time":"$upstream_header_time","upstream_time":"$upstream_response_time",'
        '"duration":$request_time,"tls_version":"$ssl_protocol","tls_cipher":"$ssl_cipher",'
        '"tls_resumed":"$ssl_session_reused","request_id":"$request_id"}}';
    access_log {ACCESS_LOG_DIR}/nginx-access.log json buffer=64k flush=100ms;"""
    conf.write_text(_nginx_common(work, "nginx-proxy", workers) + access + f"""
    client_max_body_size 0;
    client_header_timeout {HEADER_TIMEOUT_S}s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 1h;
    ssl_session_tickets on;
{ws_upstream}{grpc_upstream}    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive {POOL};
        keepalive_requests 100000000;
        keepalive_timeout {KEEPALIVE_S}s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog={BACKLOG};
{location}
    }}
    server {{
        listen 127.0.0.1:{ec_port} ssl backlog={BACKLOG};
        ssl_certificate {certs.ec_cert};
        ssl_certificate_key {certs.ec_key};
{location}
    }}
    server {{
        listen 127.0.0.1:{rsa_port} ssl backlog={BACKLOG};
        ssl_certificate {certs.rsa_cert};
        ssl_certificate_key {certs.rsa_key};
{location}
    }}
    server {{
        listen 127.0.0.1:{h2c_port} http2 backlog={BACKLOG};
{h2_location}
    }}
    server {{
        listen 127.0.0.1:{h2_tls_port} ssl http2 backlog={BACKLOG};
        ssl_certificate {certs.ec_cert};
        ssl_certificate_key {certs.ec_key};
{h2_location}
    }}
}}
""")
    return Service("nginx", cpus.wrap_proxy([nginx, "-c", str(conf)]), port, work / "logs" / "nginx.log",
                   extra_ports={"tls_ecdsa": ec_port, "tls_rsa": rsa_port, "h2c": h2c_port,
                                "h2_tls": h2_tls_port, "grpc": h2c_port})


def haproxy_service(work: Path, origin_port: int, certs: Certs, cpus: CpuPlan, haproxy: str,
                    workers: int) -> Service:
    port, ec_port, rsa_port, h2c_port, h2_tls_port = (free_port() for _ in range(5))
    conf = work / "haproxy.cfg"
    # With --access-log: httplog lines to standard output (the service's log file); HAProxy
    # writes no log files itself and has no buffered file logging.
    global_log = defaults_log = ""
    ws_use = ws_backend = ""
    if WS_ORIGIN_PORT is not None:
        ws_use = "    use_backend ws if { path_beg /ws/ }\n"
        ws_backend = (f"\nbackend ws\n    timeout tunnel {TUNNEL_IDLE_S}s\n"
                      f"    server ws 127.0.0.1:{WS_ORIGIN_PORT}\n")
    # gRPC: h2 on both sides (`proto h2` on the h2c bind, `alpn h2` on the TLS one, `proto h2`
    # to the origin's h2c listener), HAProxy's documented way to proxy gRPC.
    grpc_use = grpc_backend = ""
    if ORIGIN_H2C_PORT is not None:
        grpc_use = f"    use_backend grpc if {{ path_beg {GRPC_PREFIX} }}\n"
        grpc_backend = (f"\nbackend grpc\n    server grpc 127.0.0.1:{ORIGIN_H2C_PORT} proto h2 "
                        f"pool-max-conn {POOL}\n")
    if ACCESS_LOG_DIR is not None:
        global_log = "    log stdout format raw local0\n"
        defaults_log = "    log global\n    option httplog\n"
    conf.write_text(f"""global
{global_log}    nbthread {workers}
    maxconn {_conn_limit()}
    tune.ssl.cachesize 100000
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
{defaults_log}    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request {HEADER_TIMEOUT_S}s
    timeout http-keep-alive {KEEPALIVE_S}s
    timeout client-fin 5s

frontend fe
    bind 127.0.0.1:{port} backlog {BACKLOG}
    bind 127.0.0.1:{ec_port} ssl crt {certs.ec_pem} backlog {BACKLOG}
    bind 127.0.0.1:{rsa_port} ssl crt {certs.rsa_pem} backlog {BACKLOG}
    bind 127.0.0.1:{h2c_port} proto h2 backlog {BACKLOG}
    bind 127.0.0.1:{h2_tls_port} ssl crt {certs.ec_pem} alpn h2,http/1.1 backlog {BACKLOG}
{ws_use}{grpc_use}    default_backend be

backend be
    server origin 127.0.0.1:{origin_port} pool-max-conn {POOL}
{ws_backend}{grpc_backend}""")
    # -db: foreground, no daemon; without --access-log no `log` lines anywhere, so no access log.
    return Service("haproxy", cpus.wrap_proxy([haproxy, "-f", str(conf), "-db"]), port,
                   work / "logs" / "haproxy.log", extra_ports={"tls_ecdsa": ec_port, "tls_rsa": rsa_port,
                                                               "h2c": h2c_port, "h2_tls": h2_tls_port,
                                                               "grpc": h2c_port})


# ----------------------------------------------------------------------------------------------
# >>> rproxyd TLS hook. rproxyd has no TLS listener yet (TLS issue). Each template below is a
# candidate shape for a TLS [[listener]]; the first one `rproxyd -t` accepts is used, and the
# TLS scenarios then run against rproxyd like the others. When the TLS issue lands, put its
# real shape FIRST here. Until one is accepted, rproxyd's TLS rows are reported as
# "not supported yet" with null figures.
RPROXYD_TLS_LISTENER_TEMPLATES = [
    """
[[listener]]
name = "{name}"
bind = "127.0.0.1:{port}"
backlog = {backlog}
[listener.tls]
enabled = true
certificate = "{cert}"
certificate_key = "{key}"
""",
    """
[[listener]]
name = "{name}"
bind = "127.0.0.1:{port}"
tls = true
certificate = "{cert}"
key = "{key}"
""",
    """
[[listener]]
name = "{name}"
bind = "127.0.0.1:{port}"
[listener.tls]
certificate = "{cert}"
key = "{key}"
""",
    """
[[listener]]
name = "{name}"
bind = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
""",
]
# >>> rproxyd process hook: the supervisor's [process] table (workers, CPU pinning, runtime dir),
# tried in this order; None = an rproxyd without it (single worker in the foreground).
RPROXYD_PROCESS_TEMPLATES = [
    '\n[process]\nworkers = {workers}\ncpus = [{cpus}]\nruntime_dir = "{rundir}"\n',
    "\n[process]\nworkers = {workers}\n",
    None,
]
# >>> rproxyd h2 hook (issue 17): the h2 scenarios' listeners and gRPC backend, in the keys the
# h2 work adds: a plaintext listener with `h2c = true` (prior knowledge), a TLS listener offering
# `alpn = ["h2", "http/1.1"]`, a backend with `protocol = "h2"` for the origin's h2c listener.
# Each is tried on its own, as they may land one at a time; where `rproxyd -t` refuses one,
# rproxyd's rows in the scenarios that need it say RPROXYD_NO_H2 with the refusal, and its
# other scenarios run as before.
RPROXYD_NO_H2 = "rproxyd on this ref does not speak h2"
RPROXYD_H2C_LISTENER = """
[[listener]]
name = "h2c"
bind = "127.0.0.1:{port}"
backlog = {backlog}
h2c = true
"""
RPROXYD_H2_TLS_LISTENER = """
[[listener]]
name = "h2_tls"
bind = "127.0.0.1:{port}"
backlog = {backlog}
[listener.tls]
enabled = true
certificate = "{cert}"
certificate_key = "{key}"
alpn = ["h2", "http/1.1"]
"""
RPROXYD_GRPC_BACKEND = """
[backend.grpc]
servers = ["127.0.0.1:{port}"]
protocol = "h2"
"""
# ----------------------------------------------------------------------------------------------


def rproxyd_base_config(port: int, origin_port: int, grpc: bool = False) -> str:
    """rproxyd's configuration in every scenario: one listener, one origin pool, one route (and the
    WebSocket origin's pool and route, once it runs; with `grpc`, the h2 gRPC backend and its route,
    before the catch-all one since the first matching route wins)."""
    grpc = grpc and ORIGIN_H2C_PORT is not None
    return f"""
[[listener]]
name = "http"
bind = "127.0.0.1:{port}"
backlog = {BACKLOG}

[backend.origin]
servers = ["127.0.0.1:{origin_port}"]
connections = {POOL}

""" + (f"""
[backend.ws]
servers = ["127.0.0.1:{WS_ORIGIN_PORT}"]
""" if WS_ORIGIN_PORT is not None else "") + (
    RPROXYD_GRPC_BACKEND.format(port=ORIGIN_H2C_PORT) if grpc else "") + """
[[vhost]]
name = "default"
hosts = ["*"]
""" + ("""
[[vhost.route]]
path = "/ws/"
backend = "ws"
""" if WS_ORIGIN_PORT is not None else "") + (f"""
[[vhost.route]]
path = "{GRPC_PREFIX}"
backend = "grpc"
""" if grpc else "") + f"""
[[vhost.route]]
path = "/"
backend = "origin"

[limits]
keepalive_timeout = "{KEEPALIVE_S}s"
header_timeout = "{HEADER_TIMEOUT_S}s"
max_body_bytes = 0
""" + (f"""
[access_log]
enabled = true
file = "{ACCESS_LOG_DIR}/rproxyd-access.log"
""" if ACCESS_LOG_DIR is not None else "")


def _config_ok(rproxyd: list[str], path: Path, text: str, env: dict | None) -> tuple[bool, str]:
    path.write_text(text)
    r = subprocess.run([*rproxyd, "-t", "-c", str(path)], capture_output=True, text=True, check=False,
                       timeout=30, env=env)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def _first_problem(out: str) -> str:
    """The first problem `rproxyd -t` reported (not a warning), without its program and file prefix."""
    problems = [line for line in out.splitlines() if not line.startswith("warning:")]
    return problems[0].split(": ", 2)[-1] if problems else "rejected"


def tls_floor_service(work: Path, certs: Certs, cpus: CpuPlan, workers: int,
                      relay_to: int | None = None) -> Service:
    """A TLS calibration (perf/tls_floor.py) on both TLS ports: uvloop + ssl answering without
    proxying, or with `relay_to` (the origin's port) the relay floor, which fetches each answer
    from the origin over a pooled keep-alive connection."""
    ec_port, rsa_port = free_port(), free_port()
    name = "tls_floor" if relay_to is None else "tls_relay_floor"
    relay = [] if relay_to is None else ["--relay", str(relay_to)]
    argv = [sys.executable, str(Path(__file__).with_name("tls_floor.py")), "--workers", str(workers), *relay,
            f"{ec_port}:{certs.ec_cert}:{certs.ec_key}", f"{rsa_port}:{certs.rsa_cert}:{certs.rsa_key}"]
    return Service(name, cpus.wrap_proxy(argv), ec_port, work / "logs" / f"{name}.log",
                   extra_ports={"tls_ecdsa": ec_port, "tls_rsa": rsa_port})


def rproxyd_service(work: Path, origin_port: int, certs: Certs, cpus: CpuPlan, rproxyd: list[str],
                    workers: int, env: dict | None = None, name: str = "rproxyd",
                    phases: Path | None = None, h2: bool = False) -> tuple[Service, dict[str, str]]:
    """rproxyd with the HTTP listener, plus TLS listeners if its configuration accepts them, and
    with `h2` the h2 listeners and gRPC backend (RPROXYD_H2_LISTENERS) if it accepts those.

    `name` keeps a second instance's files apart; `phases` is an operator phases module to run.
    Returns the service and notes (keys "tls", "workers", "h2") explaining what was not supported.
    """
    port, ec_port, rsa_port, h2c_port, h2_tls_port = (free_port() for _ in range(5))
    conf = work / f"{name}.toml"
    probe = work / f"{name}-probe.toml"
    phases_table = "" if phases is None else f'\n[phases]\nmodule = "{phases}"\n'
    base = rproxyd_base_config(port, origin_port) + phases_table
    notes: dict[str, str] = {}

    tail = ""
    for tmpl in RPROXYD_PROCESS_TEMPLATES:
        if tmpl is None:
            if workers > 1:
                notes["workers"] = f"rproxyd has no workers setting: ran 1 worker, the others {workers}"
            break
        rundir = work / f"{name}-run"
        rundir.mkdir(exist_ok=True)
        cand = tmpl.format(workers=workers, cpus=", ".join(map(str, cpus.proxy)), rundir=rundir)
        if _config_ok(rproxyd, probe, base + cand, env)[0]:
            tail = cand
            break
    head = ""
    tls = ""
    error = ""
    for tmpl in RPROXYD_TLS_LISTENER_TEMPLATES:
        cand = (tmpl.format(name="tls_ecdsa", port=ec_port, cert=certs.ec_cert, key=certs.ec_key,
                            backlog=BACKLOG)
                + tmpl.format(name="tls_rsa", port=rsa_port, cert=certs.rsa_cert, key=certs.rsa_key,
                              backlog=BACKLOG))
        ok, out = _config_ok(rproxyd, probe, head + base + cand + tail, env)
        if ok:
            tls = cand
            break
        error = error or _first_problem(out)
    extra = {}
    if tls:
        extra = {"tls_ecdsa": ec_port, "tls_rsa": rsa_port}
    else:
        notes["tls"] = f"not supported yet: rproxyd's configuration has no TLS listener ({error})"
    if h2:
        # Keys as in extra_ports: "h2c" and "h2_tls" the listeners, "grpc" the h2c one with the
        # gRPC route to an h2 backend.
        h2_tls = RPROXYD_H2_TLS_LISTENER.format(port=h2_tls_port, backlog=BACKLOG, cert=certs.ec_cert,
                                                key=certs.ec_key)
        pieces = {"h2c": (h2c_port, RPROXYD_H2C_LISTENER.format(port=h2c_port, backlog=BACKLOG)),
                  "h2_tls": (h2_tls_port, h2_tls)}
        for piece, (piece_port, text) in pieces.items():
            ok, out = _config_ok(rproxyd, probe, head + base + tls + text + tail, env)
            if ok:
                tls += text
                extra[piece] = piece_port
            else:
                notes[piece] = f"{RPROXYD_NO_H2} ({_first_problem(out)})"
        if "h2c" in extra:
            grpc_base = rproxyd_base_config(port, origin_port, grpc=True) + phases_table
            ok, out = _config_ok(rproxyd, probe, head + grpc_base + tls + tail, env)
            if ok:
                base = grpc_base
                extra["grpc"] = h2c_port
            else:
                notes["grpc"] = f"{RPROXYD_NO_H2} to backends ({_first_problem(out)})"
        else:
            notes["grpc"] = notes["h2c"]
    conf.write_text(head + base + tls + tail)
    ok, out = _config_ok(rproxyd, probe, head + base + tls + tail, env)
    if not ok:
        raise RuntimeError(f"rproxyd rejects the benchmark configuration: {out}")
    log(f"rproxyd config {conf}" + (" with TLS listeners" if tls else " (no TLS listeners)")
        + "".join(f", {piece}" for piece in ("h2c", "h2_tls", "grpc") if piece in extra))
    svc = Service(name, cpus.wrap_proxy([*rproxyd, "-c", str(conf)]), port,
                  work / "logs" / f"{name}.log", extra_ports=extra, env=env)
    return svc, notes
