"""The request path runs the operator's phases: real rproxyd, the demo origin, real clients.

Each test writes its phases module to tmp_path and starts rproxyd with `[phases] module`
pointing at it. The shipped examples are loaded through a small module in tmp_path that
subclasses them, to point their files (keys, log) into tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import (
    Origin,
    Proxy,
    ScriptedBackend,
    free_port,
    proxy_config,
    raw_exchange,
    running,
    wait_for,
)
from tests.support.phases import EXAMPLES, phase_module
from tests.support_proc import Rproxyd, config_text
from tests.test_observe import metric_sum, until_metrics


def _indented(method: str) -> str:
    """A method's source (continuation lines indented by 4) placed at class level in a _module template."""
    return textwrap.indent(method, " " * 12).lstrip()


def _example(tmp_path: Path, example: str, cls: str, attributes: str = "") -> Path:
    """A module subclassing a shipped example (imported by its file path), with `attributes` set."""
    return phase_module(tmp_path, f"""
        import importlib.util

        _spec = importlib.util.spec_from_file_location("example_{example}", "{EXAMPLES / example}.py")
        _example = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_example)

        class Site(_example.{cls}):
        {textwrap.indent(attributes or "pass", "    ")}
    """, f"wrap_{example}.py")


def _proxy(tmp_path: Path, origin: Origin, module: Path, extra: str = "",
           vhosts: str | None = None) -> Proxy:
    port = free_port()
    config = proxy_config(port, {"app": [origin.address]}, vhosts=vhosts,
                          extra=f'[phases]\nmodule = "{module}"\n{textwrap.dedent(extra)}')
    return Proxy(tmp_path, config, port)


@pytest.fixture
def origin():
    origin = Origin()
    yield origin
    origin.stop()


# -- every phase, in order

ORDER = """
    import json
    from appliance.phases import Phases

    class Site(Phases):
        def __init__(self):
            self.log = open("{log}", "a", buffering=1)

        def new_ctx(self):
            return ["new_ctx"]

        def request_filter(self, req, ctx):
            ctx.append("request_filter")

        def upstream_request_filter(self, req, ctx):
            ctx.append("upstream_request_filter")
            req.headers.set("X-Tenant", req.host.split(":")[0])
            req.path = "/headers"
            req.query = "from=phase"

        def response_filter(self, req, resp, ctx):
            ctx.append("response_filter")
            resp.headers.remove("Server")
            resp.headers.set("X-Phase", "yes")
            resp.status = 203

        def logging(self, req, resp, error, ctx):
            ctx.append("logging")
            self.log.write(json.dumps([ctx, req.path, resp.status, repr(error)]) + "\\n")
"""


def test_phases_run_in_order_and_their_edits_reach_the_origin_and_the_client(tmp_path, origin):
    log = tmp_path / "order.log"
    proxy = _proxy(tmp_path, origin, phase_module(tmp_path, ORDER.format(log=log)))
    with running(proxy):
        response = httpx.get(f"{proxy.url}/anything?x=1", headers={"Host": "shop.example"})
        assert response.status_code == 203
        assert response.headers["x-phase"] == "yes"
        assert "server" not in response.headers
        seen = response.json()  # the origin's /headers: what went up
        assert seen["path"] == "/headers?from=phase"
        assert dict(seen["headers"])["X-Tenant"] == "shop.example"
        wait_for(lambda: log.exists() and log.read_text(), 5, "the logging phase's line")
        ctx, path, status, error = json.loads(log.read_text().splitlines()[0])
    assert ctx == ["new_ctx", "request_filter", "upstream_request_filter", "response_filter", "logging"]
    assert (path, status, error) == ("/headers", 203, "None")


def test_a_phase_cannot_spoof_the_proxy_headers(tmp_path, origin):
    module = phase_module(tmp_path, """
        from appliance.phases import Phases

        class Site(Phases):
            def upstream_request_filter(self, req, ctx):
                try:
                    req.headers.set("X-Forwarded-For", "203.0.113.9")
                except ValueError:
                    req.headers.set("X-Refused", "X-Forwarded-For")
    """)
    proxy = _proxy(tmp_path, origin, module)
    with running(proxy):
        seen = httpx.get(f"{proxy.url}/headers", headers={"X-Forwarded-For": "198.51.100.1",
                                                          "X-Request-Id": "spoofed"}).json()
    seen = dict(seen["headers"])
    assert seen["X-Refused"] == "X-Forwarded-For"
    assert seen["X-Forwarded-For"] == "198.51.100.1, 127.0.0.1"  # the client's, then the proxy's
    assert "203.0.113.9" not in json.dumps(seen)


@pytest.mark.parametrize("kind", ["sync", "async-eager", "async-suspends"])
def test_request_filter_answers_without_the_backend(tmp_path, origin, kind):
    body = {
        "sync": "def request_filter(self, req, ctx):\n    return self.answer(req)",
        "async-eager": "async def request_filter(self, req, ctx):\n    return self.answer(req)",
        "async-suspends": ("async def request_filter(self, req, ctx):\n    await asyncio.sleep(0.05)\n"
                           "    return self.answer(req)"),
    }[kind]
    module = phase_module(tmp_path, f"""
        import asyncio
        from appliance.phases import Phases, Response

        class Site(Phases):
            def answer(self, req):
                if req.path.startswith("/admin"):
                    return Response(403, {{"X-Why": "admin"}}, b"no\\n")

            {_indented(body)}
    """)
    proxy = _proxy(tmp_path, origin, module)
    with running(proxy), httpx.Client(base_url=proxy.url) as client:
        refused = client.get("/admin/x")
        assert (refused.status_code, refused.content, refused.headers["x-why"]) == (403, b"no\n", "admin")
        assert refused.headers["content-length"] == "3"
        # The same keep-alive connection goes on to the backend for other paths.
        assert client.get("/").status_code == 200
        assert client.head("/admin/y").status_code == 403
        # Pipelined: answered in order, the phase's answer between two proxied ones.
        raw = raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert [int(s) for s in re.findall(rb"^HTTP/1.1 (\d+)", raw, re.M)] == [200, 403, 200]


RAISING = {
    # With a phase besides new_ctx: a class of new_ctx alone runs nothing (no phase reads ctx).
    "new_ctx": ("def new_ctx(self):\n    raise RuntimeError('boom in new_ctx')\n\n"
                "def request_filter(self, req, ctx):\n    return None"),
    "request_filter": "def request_filter(self, req, ctx):\n    self.boom(req, 'request_filter')",
    "upstream_request_filter": ("def upstream_request_filter(self, req, ctx):\n"
                                "        self.boom(req, 'upstream_request_filter')"),
    "response_filter": ("def response_filter(self, req, resp, ctx):\n"
                        "        self.boom(req, 'response_filter')"),
    "logging": "def logging(self, req, resp, error, ctx):\n    self.boom(req, 'logging')",
}


@pytest.mark.parametrize("phase", list(RAISING))
def test_a_raising_phase_gives_500_logs_the_traceback_counts_and_the_worker_serves_on(tmp_path, origin,
                                                                                       phase):
    module = phase_module(tmp_path, f"""
        from appliance.phases import Phases

        class Site(Phases):
            def boom(self, req, phase):
                if req.query == "fail":
                    raise RuntimeError("boom in " + phase)

            {_indented(RAISING[phase])}
    """)
    (tmp_path / "run").mkdir()
    proxy = Rproxyd(tmp_path, config_text(origin.port, tmp_path / "run", extra=f"""
[admin]
enabled = true
bind = "127.0.0.1:0"

[phases]
module = "{module}"
"""))
    try:
        proxy.wait_running()
        url = f"http://{proxy.address[0]}:{proxy.address[1]}"
        response = httpx.get(f"{url}/?fail", headers={"Connection": "close"})
        # The logging phase runs after the response: its failure changes nothing the client sees.
        assert response.status_code == (200 if phase == "logging" else 500)
        wait_for(lambda: f"boom in {phase}" in proxy.log(), 5, "the traceback")
        log = proxy.log()
        assert f"phase {phase} of Site failed: RuntimeError: boom in {phase}" in log
        assert "Traceback (most recent call last)" in log
        expected = 1 if phase == "new_ctx" else 0
        assert httpx.get(f"{url}/").status_code == (500 if expected else 200)  # the worker serves on
        until_metrics(proxy, lambda text: metric_sum(text, "rproxyd_phase_errors_total", phase=phase)
                      == 1 + expected, "the phase's errors counted")
    finally:
        proxy.stop()


def test_a_reload_loads_the_changed_module_and_a_broken_one_keeps_the_old_generation(tmp_path, origin):
    source = """
        from appliance.phases import Phases

        class Site(Phases):
            def response_filter(self, req, resp, ctx):
                resp.headers.set("X-Version", "{version}")
    """
    module = phase_module(tmp_path, source.format(version="one"))
    (tmp_path / "run").mkdir()
    config = config_text(origin.port, tmp_path / "run", extra=f'[phases]\nmodule = "{module}"\n')
    proxy = Rproxyd(tmp_path, config)
    try:
        proxy.wait_running()
        url = f"http://{proxy.address[0]}:{proxy.address[1]}/"
        assert httpx.get(url).headers["x-version"] == "one"
        phase_module(tmp_path, source.format(version="two"))
        assert proxy.reload().returncode == 0
        proxy.wait_running(generation=2)
        assert httpx.get(url, headers={"Connection": "close"}).headers["x-version"] == "two"
        module.write_text(module.read_text() + "\nimport no_such_module_here\n")
        failed = proxy.reload()
        assert failed.returncode == 1
        assert "no_such_module_here" in failed.stderr
        assert proxy.status()["generation"] == 2
        assert httpx.get(url, headers={"Connection": "close"}).headers["x-version"] == "two"
    finally:
        proxy.stop()


def test_examples_json_errors_and_api_key_end_to_end(tmp_path, origin):
    digest = hashlib.sha256(b"s3cret").hexdigest()
    (tmp_path / "keys").write_text(f"alice {digest}\n")
    keyed = _example(tmp_path, "api_key", "ApiKey", f'keys_file = "{tmp_path}/keys"')
    proxy = _proxy(tmp_path, origin, keyed)
    with running(proxy):
        assert httpx.get(f"{proxy.url}/headers").status_code == 401
        assert httpx.get(f"{proxy.url}/headers", headers={"X-Api-Key": "wrong"}).status_code == 403
        seen = httpx.get(f"{proxy.url}/headers", headers={"X-Api-Key": "s3cret"}).json()
    sent = dict(seen["headers"])
    assert sent["X-Api-Client"] == "alice" and "X-Api-Key" not in sent
    errors_dir = tmp_path / "errors"
    errors_dir.mkdir()
    proxy = _proxy(errors_dir, origin, _example(errors_dir, "json_errors", "JsonErrors"),
                   vhosts='[[vhost]]\nname = "default"\nhosts = ["*"]\n[[vhost.route]]\npath = "/only"\n'
                   'backend = "app"\n')
    with running(proxy):
        missing = httpx.get(f"{proxy.url}/elsewhere", headers={"X-Request-Id": "r-404"})
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/json")
    assert missing.json()["status"] == 404


# -- a phase that waits: what other connections see

def test_a_blocking_sync_phase_stalls_other_connections_only_while_it_runs(tmp_path, origin):
    # One worker: the slow requests and the others share its event loop. A sync phase that
    # blocks blocks the worker, so each other request waits at most that long, never longer.
    module = phase_module(tmp_path, """
        import time
        from appliance.phases import Phases

        class Site(Phases):
            def request_filter(self, req, ctx):
                if req.path == "/slow":
                    time.sleep(0.1)
    """)
    proxy = _proxy(tmp_path, origin, module)
    with running(proxy):
        slow_statuses: list[int] = []

        def slow() -> None:
            with httpx.Client(base_url=proxy.url, timeout=30) as client:
                slow_statuses.extend(client.get("/slow").status_code for _ in range(10))

        thread = threading.Thread(target=slow)
        statuses, gaps = [], []
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            thread.start()
            last = time.monotonic()
            while thread.is_alive() or not statuses:
                statuses.append(client.get("/").status_code)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
        thread.join()
    assert slow_statuses == [404] * 10  # the demo origin has no /slow: answered, after the phase
    assert set(statuses) == {200}
    assert max(gaps) < 1.0, gaps  # generous: one phase blocks 0.1 s


def test_an_awaiting_async_phase_does_not_hold_up_other_connections(tmp_path, origin):
    # The slow request's phase waits until five other requests have been served (or 20 s):
    # its answer says how many it saw, so "others completed while it waited" is a count.
    waiting = tmp_path / "waiting"
    module = phase_module(tmp_path, f"""
        import asyncio
        from pathlib import Path
        from appliance.phases import Phases, Response

        class Site(Phases):
            def __init__(self):
                self.served = 0

            async def request_filter(self, req, ctx):
                if req.path != "/slow":
                    self.served += 1
                    return None
                Path("{waiting}").touch()
                for _ in range(200):
                    if self.served >= 5:
                        return Response(200, body=f"released after {{self.served}}\\n")
                    await asyncio.sleep(0.1)
                return Response(504, body=b"never released\\n")
    """)
    proxy = _proxy(tmp_path, origin, module)
    with running(proxy):
        slow: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: slow.append(httpx.get(f"{proxy.url}/slow", timeout=30)))
        thread.start()
        wait_for(waiting.exists, 10, "the slow request's phase awaiting")
        others = [httpx.get(f"{proxy.url}/", headers={"Connection": "close"}).status_code for _ in range(5)]
        thread.join(30)
    assert others == [200] * 5
    assert (slow[0].status_code, slow[0].text) == (200, "released after 5\n")


def test_a_request_body_sent_while_an_async_phase_awaits_reaches_the_server_whole(tmp_path, origin):
    # The connection keeps reading while the phase awaits: the body is buffered (past the
    # write watermark, reading pauses) and goes up once the phase lets the request on.
    module = phase_module(tmp_path, """
        import asyncio
        from appliance.phases import Phases

        class Site(Phases):
            async def request_filter(self, req, ctx):
                await asyncio.sleep(0.2)
    """)
    body = bytes(range(256)) * 4096  # 1 MiB, four times write_high_watermark
    proxy = _proxy(tmp_path, origin, module)
    with running(proxy), httpx.Client(base_url=proxy.url, timeout=30) as client:
        echoed = client.post("/echo", content=body)
        again = client.post("/echo", content=b"small")  # the same connection, the next request
    assert (echoed.status_code, len(echoed.content), echoed.content == body) == (200, len(body), True)
    assert again.content == b"small"


@pytest.mark.parametrize("phase", ["request_filter", "upstream_peer"])
def test_a_client_gone_while_an_async_phase_awaits_cancels_it_and_logging_runs_once(tmp_path, origin, phase):
    trace = tmp_path / "trace.log"
    module = phase_module(tmp_path, f"""
        import asyncio
        from appliance.phases import Phases

        class Site(Phases):
            def __init__(self):
                self.out = open("{trace}", "a", buffering=1)

            async def {phase}(self, req, ctx):
                if req.path == "/boom":
                    await asyncio.sleep(0)  # suspends: the failure comes from the task
                    raise RuntimeError("boom after awaiting")
                if req.path == "/wait":
                    self.out.write("waiting\\n")
                    try:
                        await asyncio.sleep(60)
                    except asyncio.CancelledError:
                        self.out.write("cancelled\\n")
                        raise

            def logging(self, req, resp, error, ctx):
                self.out.write(f"logging {{req.path}} {{resp}} {{error}}\\n")
    """)
    proxy = _proxy(tmp_path, origin, module)
    with running(proxy):
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        sock.sendall(b"GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")
        wait_for(lambda: "waiting" in trace.read_text(), 10, "the phase awaiting")
        # The client goes away abruptly (a reset), as a browser tab closed mid-request.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        wait_for(lambda: "cancelled" in trace.read_text(), 10, "the phase's task cancelled")
        assert httpx.get(f"{proxy.url}/", headers={"Connection": "close"}).status_code == 200  # serves on
        wait_for(lambda: "logging / " in trace.read_text(), 10, "the next request logged")
        lines = trace.read_text().splitlines()
        assert lines.count("logging /wait None None") == 1, lines
        assert "Traceback" not in proxy.log() and "never retrieved" not in proxy.log(), proxy.log()
        # A phase failing after it suspended is a phase failure like any other.
        assert httpx.get(f"{proxy.url}/boom").status_code == 500
        wait_for(lambda: "boom after awaiting" in proxy.log(), 10, "the failure logged")


def test_a_raising_init_fails_the_start_in_one_line_and_a_reload_keeps_the_old_generation(tmp_path, origin):
    good = """
        from appliance.phases import Phases

        class Site(Phases):
            def response_filter(self, req, resp, ctx):
                resp.headers.set("X-Version", "one")
    """
    bad = """
        from appliance.phases import Phases

        class Site(Phases):
            def __init__(self):
                raise OSError("cannot open the key file")

            def response_filter(self, req, resp, ctx):
                resp.headers.set("X-Version", "two")
    """
    expected = f"{tmp_path / 'site.py'}:6: Site() failed: OSError: cannot open the key file"
    module = phase_module(tmp_path, bad)
    (tmp_path / "run").mkdir()
    config = config_text(origin.port, tmp_path / "run", extra=f'[phases]\nmodule = "{module}"\n')
    (tmp_path / "rproxy.toml").write_text(config)
    started = subprocess.run([sys.executable, "-m", "appliance", "-c", str(tmp_path / "rproxy.toml")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode != 0
    named = [line for line in started.stderr.splitlines() if expected in line]
    assert len(named) == 1, started.stderr
    phase_module(tmp_path, good)
    proxy = Rproxyd(tmp_path, config)
    try:
        url = f"http://{proxy.address[0]}:{proxy.address[1]}/"
        assert httpx.get(url, headers={"Connection": "close"}).headers["x-version"] == "one"
        phase_module(tmp_path, bad)
        failed = proxy.reload()
        assert failed.returncode == 1
        assert expected in failed.stderr, failed.stderr
        assert proxy.status()["generation"] == 1
        assert httpx.get(url, headers={"Connection": "close"}).headers["x-version"] == "one"
    finally:
        proxy.stop()


# -- the shipped examples

def _redirecting_origin(conn: socket.socket, backend: ScriptedBackend) -> None:
    """An origin that tells what it runs and redirects to its own (internal) address."""
    while backend.read_head(conn) is not None:
        conn.sendall(b"HTTP/1.1 302 Found\r\nServer: Apache/2.4\r\nX-Powered-By: PHP/8.2\r\n"
                     b"Location: http://app.internal:8080/login?next=%2F\r\nContent-Length: 0\r\n\r\n")


def test_example_header_rewrite_end_to_end(tmp_path):
    backend = ScriptedBackend(_redirecting_origin)
    proxy = _proxy(tmp_path, backend, _example(tmp_path, "header_rewrite", "HeaderRewrite"))
    with running(proxy):
        response = httpx.get(f"{proxy.url}/account", headers={"Host": "shop.example"})
    backend.stop()
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example/login?next=%2F"
    assert "server" not in response.headers and "x-powered-by" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["strict-transport-security"] == "max-age=31536000"


def test_example_log_selected_end_to_end(tmp_path, origin):
    selected = tmp_path / "selected.log"
    proxy = _proxy(tmp_path, origin, _example(tmp_path, "log_selected", "LogSelected",
                                              f'log_file = "{selected}"'))
    with running(proxy), httpx.Client(base_url=proxy.url) as client:
        assert client.get("/").status_code == 200  # not selected
        assert client.get("/status/503", headers={"X-Request-Id": "r-503"}).status_code == 503
        assert client.get("/api/admin/users", headers={"User-Agent": "ops/1"}).status_code == 404
        wait_for(lambda: selected.exists() and len(selected.read_text().splitlines()) == 2, 10,
                 "two selected lines")
    first, second = (json.loads(line) for line in selected.read_text().splitlines())
    assert (first["path"], first["status"], first["request_id"]) == ("/status/503", 503, "r-503")
    assert first["error"] is None
    assert (second["path"], second["status"], second["user_agent"]) == ("/api/admin/users", 404, "ops/1")
    assert first["client"] == "127.0.0.1" and first["duration_ms"] >= 0
