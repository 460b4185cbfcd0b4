"""The phase API on its own: header and message views, Response and Peer, loading and
checking an operator's module, compiled dispatch, eager async phases, and `rproxyd -t`
(a real subprocess) on configurations with good and bad modules.

The request path's use of the phases is tested end to end in tests/test_phases_wiring.py.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.config import ConfigError, load
from appliance.http.errors import BackendUnavailable, PhaseFailed, error_response
from appliance.phases import PHASES, Headers, Peer, Phases, Request, Response, ResponseHead, check, eager
from appliance.phases.dispatch import (
    NO_PHASES,
    PeerChoice,
    PhaseDispatch,
    PhaseReturnError,
    body_bytes,
    compile_dispatch,
    response_or_none,
)
from appliance.phases.headers import REQUEST_OWNED, RESPONSE_OWNED
from appliance.phases.loader import PhaseError, import_module, pick_class, validate
from appliance.phases.selection import dispatch_per_vhost, resolve
from tests.support import RPROXYD
from tests.support.phases import EXAMPLES, phase_module

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))


def _request(headers: list[tuple[bytes, bytes]] | None = None, target: bytes = b"/a/b?x=1",
             method: bytes = b"GET") -> Request:
    raw = [(b"Host", b"example.com"), (b"Accept", b"*/*")] if headers is None else headers
    return Request(method, target, b"example.com", b"192.0.2.7", raw, "rid-1")



# -- Headers


def test_headers_are_case_insensitive_ordered_and_multi_valued():
    raw = [(b"Host", b"a"), (b"Set-Cookie", b"x=1"), (b"Accept", b"*/*"), (b"set-cookie", b"y=2")]
    headers = Headers(raw)
    assert headers.get("SET-COOKIE") == "x=1"
    assert headers["accept"] == "*/*"
    assert headers.get_all("Set-Cookie") == ["x=1", "y=2"]
    assert headers.get("missing") is None and headers.get("missing", "d") == "d"
    assert "host" in headers and "nope" not in headers and 5 not in headers
    assert list(headers) == ["Host", "Set-Cookie", "Accept", "set-cookie"]
    assert len(headers) == 4
    assert headers.items()[1] == ("Set-Cookie", "x=1")
    with pytest.raises(KeyError):
        headers["missing"]


def test_header_edits_change_the_proxys_list_in_place():
    raw = [(b"A", b"1"), (b"B", b"2"), (b"a", b"3"), (b"C", b"4")]
    headers = Headers(raw)
    assert not headers.edited
    headers.set("a", "new")  # replaces every A, where the first one was
    assert raw == [(b"a", b"new"), (b"B", b"2"), (b"C", b"4")]
    headers.add("B", "5")
    headers.set("D", "6")  # a new name goes to the end
    assert raw == [(b"a", b"new"), (b"B", b"2"), (b"C", b"4"), (b"B", b"5"), (b"D", b"6")]
    headers.remove("b")
    headers.remove("absent")
    assert headers.raw is raw and raw == [(b"a", b"new"), (b"C", b"4"), (b"D", b"6")]
    assert headers.edited


def test_header_values_round_trip_every_byte_as_latin1():
    raw = [(b"X-Name", b"caf\xe9 \xff")]
    headers = Headers(raw)
    assert headers.get("x-name") == "caf\xe9 \xff"
    headers.set("X-Name", headers.get("x-name") + "!")
    assert raw == [(b"X-Name", b"caf\xe9 \xff!")]


@pytest.mark.parametrize(("name", "value", "error"), [
    ("Bad Name", "v", "invalid header name"),
    ("X:Y", "v", "invalid header name"),
    ("X-Ok", "a\r\nX-Injected: 1", "CR, LF or NUL"),
    ("X-Ok", "a\nb", "CR, LF or NUL"),
    ("X-Ok", "snow \u2603", "latin-1"),
])
def test_header_edits_that_would_break_the_head_raise(name, value, error):
    with pytest.raises(ValueError, match=error):
        Headers([]).set(name, value)


def test_header_edits_refuse_non_str_values():
    with pytest.raises(TypeError, match="str value"):
        Headers([]).add("X-Count", 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["Content-Length", "Transfer-Encoding", "Connection", "X-Forwarded-For",
                                  "x-forwarded-proto", "X_Forwarded_For", "X-Real-IP", "X-Request-Id", "Via",
                                  "X-SSL-Subject", "x_ssl_cert", "Upgrade"])
def test_request_headers_the_proxy_owns_cannot_be_set_or_removed(name):
    headers = Headers([(b"Host", b"a")], REQUEST_OWNED, ssl_owned=True)
    edits = (lambda: headers.set(name, "1"), lambda: headers.add(name, "1"), lambda: headers.remove(name))
    for edit in edits:
        with pytest.raises(ValueError, match="managed by the proxy"):
            edit()


def test_names_are_checked_once_but_ownership_on_every_edit():
    # Header names are remembered once found to be tokens (appliance/phases/headers.py
    # _NAMES); whether a view may edit one is still decided by that view, every time.
    Headers([]).set("X-SSL-Client", "1")  # no name is owned in an operator's own Headers
    Headers([]).set("Via", "1")
    with pytest.raises(ValueError, match="managed by the proxy"):
        Headers([], REQUEST_OWNED, ssl_owned=True).set("X-SSL-Client", "2")
    with pytest.raises(ValueError, match="managed by the proxy"):
        Headers([], RESPONSE_OWNED).add("Via", "2")

    class Name(str):
        pass

    with pytest.raises(ValueError, match="invalid header name"):
        Headers([]).set(Name("Bad Name"), "1")
    raw: list[tuple[bytes, bytes]] = []
    for n in range(3000):  # more names than are remembered
        Headers(raw).add(f"X-N{n}", "v")
    assert len(raw) == 3000 and Headers(raw).get("x-n2999") == "v"


def test_host_may_be_rewritten_by_a_phase():
    raw = [(b"Host", b"a")]
    Headers(raw, REQUEST_OWNED, ssl_owned=True).set("host", "b.example")
    assert raw == [(b"host", b"b.example")]


@pytest.mark.parametrize("name", ["Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Via"])
def test_response_headers_the_proxy_owns_cannot_be_set(name):
    with pytest.raises(ValueError, match="managed by the proxy"):
        Headers([], RESPONSE_OWNED).set(name, "1")


def test_read_only_headers_refuse_edits():
    headers = Headers([(b"A", b"1")], writable=False)
    assert headers.get("a") == "1"
    with pytest.raises(ValueError, match="read-only in this phase"):
        headers.set("A", "2")


# -- the request and response views


def test_request_view_reads_the_raw_request():
    calls = []

    def make_id() -> str:
        calls.append(1)
        return "made-id"

    raw = [(b"Host", b"example.com")]
    req = Request(b"POST", b"/p/q?a=1&b=2", b"example.com", b"2001:db8::1", raw, make_id)
    assert (req.method, req.path, req.query, req.host, req.client_ip) == (
        "POST", "/p/q", "a=1&b=2", "example.com", "2001:db8::1")
    assert calls == []  # a request id is made only when a phase reads it
    assert req.request_id == "made-id" and calls == [1]
    assert req._headers is None  # no header view until a phase touches .headers
    assert req.headers.get("host") == "example.com" and req.headers.raw is raw
    assert Request(b"GET", b"/", None, "10.0.0.1", [], "r").host == ""
    assert _request(target=b"/only").query == ""


def test_request_view_is_writable_only_when_the_proxy_says_so():
    req = _request()
    headers = req.headers
    with pytest.raises(ValueError, match="only be changed in upstream_request_filter"):
        req.path = "/x"
    with pytest.raises(ValueError, match="read-only"):
        headers.set("X-A", "1")
    req.writable = True
    req.path = "/new/path"
    assert req.raw_target == b"/new/path?x=1"  # the query is kept
    req.query = "?y=2"  # a leading ? is tolerated
    assert req.raw_target == b"/new/path?y=2"
    req.query = ""
    assert req.raw_target == b"/new/path"
    req.method = "PUT"
    headers.set("X-Tenant", "t1")
    assert req.raw_method == b"PUT" and (b"X-Tenant", b"t1") in req.raw_headers
    req.writable = False
    with pytest.raises(ValueError):
        headers.remove("X-Tenant")


@pytest.mark.parametrize("path", ["relative", "/with space", "/a?b", "/a#frag", "/caf\xe9", ""])
def test_request_path_must_go_on_a_request_line_unchanged(path):
    req = _request()
    req.writable = True
    with pytest.raises(ValueError, match="invalid path"):
        req.path = path


@pytest.mark.parametrize(("old", "new"), [(b"GET", "HEAD"), (b"HEAD", "GET"), (b"GET", "CONNECT")])
def test_request_method_changes_that_change_the_framing_raise(old, new):
    req = _request(method=old)
    req.writable = True
    with pytest.raises(ValueError, match="framing"):
        req.method = new
    with pytest.raises(ValueError, match="invalid method"):
        req.method = "GE T"


def test_request_rebase_starts_each_upstream_try_from_the_built_ins_request():
    req = _request()
    assert req.path == "/a/b"
    headers = req.headers  # made in request_filter, read-only there
    first = [(b"Host", b"example.com")]
    req.rebase(b"GET", b"/rewritten?z=9", first)  # the route's rewrite, the header policy's list
    assert (req.path, req.query) == ("/rewritten", "z=9")
    assert req.headers is headers and headers.raw is first  # one view, over the list that goes up
    headers.set("X-Try", "1")
    assert req.sent() == (b"GET", b"/rewritten?z=9", [(b"Host", b"example.com"), (b"X-Try", b"1")])
    with pytest.raises(ValueError, match="read-only"):
        headers.set("X-Try", "2")  # sent: read-only again
    second = [(b"Host", b"example.com")]
    req.rebase(b"GET", b"/rewritten?z=9", second)  # a retry: the first try's edits are not in it
    headers.add("X-Try", "2")
    assert req.sent()[2] == [(b"Host", b"example.com"), (b"X-Try", b"2")]


def test_response_view_status_and_headers():
    raw = [(b"Server", b"origin"), (b"Content-Length", b"5")]
    resp = ResponseHead(200, raw)
    assert resp.status == 200 and resp.headers.get("server") == "origin"
    with pytest.raises(ValueError, match="only be changed in response_filter"):
        resp.status = 404
    resp.writable = True
    resp.status = 404
    resp.headers.remove("Server")
    assert resp.status == 404 and raw == [(b"Content-Length", b"5")]
    for bad in (204, 304, 100, 600, "200", True):
        with pytest.raises(ValueError):
            resp.status = bad
    bodyless = ResponseHead(304, [])
    bodyless.writable = True
    with pytest.raises(ValueError, match="has a body"):
        bodyless.status = 200


# -- Response and Peer


def test_response_validates_what_the_operator_builds():
    resp = Response(403, {"Content-Type": "text/plain"}, "no\n")
    assert resp.body == b"no\n" and resp.headers.raw == [(b"Content-Type", b"text/plain")]
    assert Response(200, [("X-A", "1"), ("X-A", "2")]).headers.get_all("x-a") == ["1", "2"]
    assert Response(204).body == b""
    with pytest.raises(ValueError, match="from 200 to 599"):
        Response(101)
    with pytest.raises(ValueError, match="no body"):
        Response(204, body=b"x")
    with pytest.raises(ValueError, match="managed by the proxy"):
        Response(200, {"Content-Length": "3"}, b"abc")
    with pytest.raises(TypeError, match="bytes or str"):
        Response(200, body=42)  # type: ignore[arg-type]


def test_peer_parses_and_validates():
    peer = Peer("[2001:db8::1]:8443", tls=True, sni="api.example.com", read_timeout=5)
    assert (peer.host, peer.port, peer.tls) == ("2001:db8::1", 8443, True)
    assert peer == Peer("[2001:db8::1]:8443", tls=True, sni="api.example.com", read_timeout=5)
    assert len({peer, Peer("[2001:db8::1]:8443", tls=True, sni="api.example.com", read_timeout=5)}) == 1
    for bad in ({"address": "no-port"}, {"address": "h:0"}, {"address": "h:1", "connect_timeout": 0},
                {"address": "h:1", "sni": ""}):
        with pytest.raises(ValueError):
            Peer(**bad)
    with pytest.raises(TypeError):
        Peer("h:1", tls="yes")  # type: ignore[arg-type]


# -- loading a module


def test_the_modules_one_subclass_is_found(tmp_path):
    path = phase_module(tmp_path, """
        from appliance.phases import Phases
        from appliance.phases import Phases as Imported  # the base itself is never a candidate

        class Site(Phases):
            def request_filter(self, req, ctx):
                return None
    """)
    module = import_module(str(path))
    assert pick_class(module, "").__name__ == "Site"
    with pytest.raises(PhaseError, match=r"site\.py: no class Other \(subclasses of Phases there: Site\)"):
        pick_class(module, "Other")


def test_no_subclass_or_several_are_errors_naming_file_and_lines(tmp_path):
    none = import_module(str(phase_module(tmp_path, "X = 1\n", "none.py")))
    with pytest.raises(PhaseError, match=r"none\.py: no subclass of appliance\.phases\.Phases"):
        pick_class(none, "")
    several = import_module(str(phase_module(tmp_path, """
        from appliance.phases import Phases

        class A(Phases):
            pass

        class B(Phases):
            pass
    """, "several.py")))
    with pytest.raises(PhaseError, match=r"2 subclasses of Phases \(A at line 4, B at line 7\); name"):
        pick_class(several, "")
    assert pick_class(several, "B").__name__ == "B"


def _problems(tmp_path: Path, body: str) -> list[str]:
    path = phase_module(tmp_path, "from appliance.phases import Phases\n\nclass Site(Phases):\n"
                   + textwrap.indent(textwrap.dedent(body), "    "))
    return validate(pick_class(import_module(str(path)), ""))


def test_a_misspelt_phase_is_an_error_with_file_line_and_the_phase_list(tmp_path):
    problems = _problems(tmp_path, """
        def request_filtr(self, req, ctx):
            return None

        def response_filters(self, req, resp, ctx):
            pass

        def check_key(self, key):  # a helper of the operator's: not a phase, fine
            return True
    """)
    site = tmp_path / "site.py"
    assert problems == [
        f"{site}:5: unknown phase request_filtr (did you mean request_filter?); phases are "
        + ", ".join(PHASES),
        f"{site}:8: unknown phase response_filters (did you mean response_filter?); phases are "
        + ", ".join(PHASES),
    ]


def test_pingora_phases_rproxyd_lacks_are_named_as_such(tmp_path):
    problems = _problems(tmp_path, """
        def upstream_response_filter(self, session, upstream_response, ctx):
            pass
    """)
    assert len(problems) == 1
    assert "site.py:5: upstream_response_filter is a Pingora phase rproxyd does not have" in problems[0]


def test_wrong_signatures_and_kinds_are_errors_at_their_def(tmp_path):
    problems = _problems(tmp_path, """
        def upstream_peer(self, req):
            return None

        async def response_filter(self, req, resp, ctx):
            pass

        @staticmethod
        def logging(req, resp, error, ctx):
            pass

        def response_body_filter(self, req, chunk, end, ctx):
            yield chunk

        def fail_to_proxy(self, req, error, ctx, *, required):
            return None
    """)
    site = tmp_path / "site.py"
    assert problems == [
        f"{site}:5: upstream_peer(self, req) does not match upstream_peer(self, req, ctx)",
        f"{site}:8: response_filter may not be async (only request_filter and upstream_peer may be; "
        "the others run while the response is relayed)",
        f"{site}:11: Site.logging must be a method (def logging(self, req, resp, error, ctx)), "
        "not staticmethod",
        f"{site}:15: response_body_filter is a generator (it yields); a phase returns its result",
        f"{site}:18: fail_to_proxy(self, req, error, ctx, *, required) does not match "
        "fail_to_proxy(self, req, error, ctx)",
    ]


def test_flexible_signatures_and_allowed_async_pass(tmp_path):
    assert _problems(tmp_path, """
        async def request_filter(self, req, ctx):
            return None

        async def upstream_peer(self, *args):
            return None

        def logging(self, req, resp, error, ctx=None, extra=1):
            pass
    """) == []


def test_an_init_that_needs_arguments_is_an_error(tmp_path):
    problems = _problems(tmp_path, """
        def __init__(self, backends):
            self.backends = backends
    """)
    assert problems == [f"{tmp_path / 'site.py'}:5: Site() is made with no arguments; its "
                        "__init__(backends) needs some"]


def test_a_module_that_raises_on_import_names_its_own_line(tmp_path):
    path = phase_module(tmp_path, """
        import json

        def setup():
            return json.loads("not json")

        CONFIG = setup()
    """)
    with pytest.raises(PhaseError) as raised:
        import_module(str(path))
    assert str(raised.value).startswith(f"{path}:5: importing failed: JSONDecodeError: Expecting value")


def test_syntax_errors_and_missing_files_name_the_file(tmp_path):
    path = phase_module(tmp_path, "x = 1\ndef broken(:\n")
    with pytest.raises(PhaseError, match=rf"^{path}:2: syntax error: "):
        import_module(str(path))
    with pytest.raises(PhaseError, match=r"missing\.py: cannot read: No such file"):
        import_module(str(tmp_path / "missing.py"))
    exits = phase_module(tmp_path, "import sys\nsys.exit(3)\n", "exits.py")
    with pytest.raises(PhaseError, match=rf"^{exits}:2: importing failed: SystemExit: 3"):
        import_module(str(exits))


def test_each_import_is_a_fresh_module_with_the_files_current_code(tmp_path):
    path = phase_module(tmp_path, "VALUE = 1\n")
    first = import_module(str(path))
    path.write_text("VALUE = 2\n")  # same size, likely the same second: a .pyc would be stale
    second = import_module(str(path))
    assert (first.VALUE, second.VALUE) == (1, 2)
    assert first.__name__ != second.__name__
    assert second.__name__ in sys.modules and first.__name__ not in sys.modules


# -- choosing classes per vhost, and what a worker builds


def test_a_default_class_is_needed_only_when_a_vhost_names_none(tmp_path):
    module = import_module(str(phase_module(tmp_path, """
        from appliance.phases import Phases

        class Api(Phases):
            def request_filter(self, req, ctx):
                return None

        class Web(Phases):
            pass
    """)))
    chosen, problems = resolve(module, "", ["Api", "Web"])
    assert problems == [] and [c.__name__ for c in chosen] == ["Api", "Web"]
    _, problems = resolve(module, "", ["Api", ""])
    assert [path for path, _ in problems] == [("phases", "module")]
    assert "2 subclasses of Phases" in problems[0][1]
    _, problems = resolve(module, "Nope", ["Missing"])
    assert [path for path, _ in problems] == [("phases", "class"), ("vhost", 0, "phases")]


def test_dispatch_per_vhost_makes_one_instance_per_class(tmp_path):
    path = phase_module(tmp_path, """
        from appliance.phases import Phases

        MADE = []

        class Site(Phases):
            def __init__(self):
                MADE.append(self)

            def request_filter(self, req, ctx):
                return None
    """)
    dispatches = dispatch_per_vhost(str(path), "", ["", "Site", ""])
    assert dispatches[0] is dispatches[1] is dispatches[2]
    made = sys.modules[dispatches[0].request_filter.__module__].MADE
    assert made == [dispatches[0].request_filter.__self__]


def test_an_init_that_raises_fails_the_load_with_its_line(tmp_path):
    path = phase_module(tmp_path, """
        from appliance.phases import Phases

        class Site(Phases):
            def __init__(self):
                self.log = open("/nonexistent/dir/file.log", "a")
    """)
    with pytest.raises(PhaseError, match=rf"^{path}:6: Site\(\) failed: FileNotFoundError"):
        dispatch_per_vhost(str(path), "", [""])


# -- compiled dispatch and return values


def test_dispatch_holds_bound_phases_and_none_for_the_rest():
    class Only(Phases):
        async def request_filter(self, req, ctx):
            return None

        def logging(self, req, resp, error, ctx):
            pass

    instance = Only()
    dispatch = compile_dispatch(instance)
    assert dispatch.name == "Only"
    assert dispatch.request_filter.__self__ is instance and dispatch.request_filter_async
    assert dispatch.new_ctx is dict  # the default ctx, made by the builtin
    assert dispatch.upstream_peer is None and not dispatch.upstream_peer_async
    assert dispatch.upstream_request_filter is None and dispatch.response_filter is None
    assert dispatch.response_body_filter is None
    assert dispatch.fail_to_proxy is None and dispatch.logging.__self__ is instance
    assert dispatch.response_side  # logging sees the response head: start_response makes its view

    class Nothing(Phases):
        def new_ctx(self):
            return object()

    assert compile_dispatch(Nothing()) is NO_PHASES
    assert all(getattr(NO_PHASES, field) in (None, False, "") for field in PhaseDispatch.__slots__)


def test_pingoras_load_balancer_example_in_ten_lines():
    class LB(Phases):
        servers = itertools.cycle([Peer("1.1.1.1:443", tls=True, sni="one.one.one.one"),
                                   Peer("1.0.0.1:443", tls=True, sni="one.one.one.one")])

        def upstream_peer(self, req, ctx):
            return next(self.servers)

        def upstream_request_filter(self, req, ctx):
            req.headers.set("Host", "one.one.one.one")

    lb = compile_dispatch(LB())
    choice = PeerChoice([])
    assert [choice(lb.upstream_peer(_request(), {})).address for _ in range(3)] == [
        "1.1.1.1:443", "1.0.0.1:443", "1.1.1.1:443"]


def test_upstream_peer_results_are_normalized():
    choice = PeerChoice(["app", "odd:name"])
    assert choice(None) is None
    assert choice("app") == "app" and choice("odd:name") == "odd:name"  # a backend name wins
    peer = choice("10.0.0.9:8080")
    assert peer == Peer("10.0.0.9:8080") and choice("10.0.0.9:8080") is peer  # parsed once
    explicit = Peer("h:1", tls=True)
    assert choice(explicit) is explicit
    with pytest.raises(PhaseReturnError, match=r"no backend of that name \(known: app, odd:name\)"):
        choice("nope")
    with pytest.raises(PhaseReturnError, match="expected None, a backend name"):
        choice(8080)


def test_response_and_body_results_are_checked():
    resp = Response(200)
    assert response_or_none(resp, "request_filter") is resp and response_or_none(None, "x") is None
    with pytest.raises(PhaseReturnError, match="request_filter returned int 403; expected a Response"):
        response_or_none(403, "request_filter")
    assert body_bytes(b"x") == b"x" and body_bytes(bytearray(b"y")) == b"y"
    with pytest.raises(PhaseReturnError, match="expected bytes"):
        body_bytes("text")


# -- async phases run eagerly


def test_an_async_phase_that_does_not_suspend_makes_no_task():
    async def decide():
        return Response(401)

    loop = asyncio.new_event_loop()
    try:
        finished, value = eager.start(decide(), loop)
        assert finished and value.status == 401
        assert asyncio.all_tasks(loop) == set()
    finally:
        loop.close()


def test_an_async_phase_that_suspends_goes_on_in_a_task():
    async def lookup(future):
        first = await future
        await asyncio.sleep(0)  # a bare yield passes through too
        return first + 1

    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        finished, task = eager.start(lookup(future), loop)
        assert not finished and isinstance(task, asyncio.Task)
        loop.call_soon(future.set_result, 41)
        assert loop.run_until_complete(task) == 42
    finally:
        loop.close()


def test_an_async_phase_error_and_cancellation_reach_the_caller():
    async def fails_at_once():
        raise RuntimeError("bad")

    async def waits(future):
        await future

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="bad"):
            eager.start(fails_at_once(), loop)
        _, task = eager.start(waits(loop.create_future()), loop)
        loop.call_soon(task.cancel)
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(task)
    finally:
        loop.close()


def test_fail_to_proxy_sees_the_status_the_proxy_would_send():
    class Errors(Phases):
        def fail_to_proxy(self, req, error, ctx):
            return Response(error.status, body=f"{error.status}\n")

    resp = compile_dispatch(Errors()).fail_to_proxy(_request(), BackendUnavailable("all down"), None)
    assert (resp.status, resp.body) == (503, b"503\n")
    failed = PhaseFailed("upstream_peer")
    resp = compile_dispatch(Errors()).fail_to_proxy(_request(), failed, None)
    assert (resp.status, failed.phase) == (500, "upstream_peer")
    # The proxy's own page for it, when fail_to_proxy gives none.
    assert error_response(failed, keep_alive=True).startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


# -- configuration and `rproxyd -t`

CONFIG = """
[[listener]]
name = "http"
bind = "127.0.0.1:0"

[backend.app]
servers = ["127.0.0.1:9"]

[[vhost]]
name = "default"
{vhost}

[[vhost.route]]
backend = "app"

[process]
runtime_dir = "{run}"
{phases}
"""


def _config(tmp_path: Path, phases: str = "", vhost: str = "") -> Path:
    main = tmp_path / "rproxy.toml"
    main.write_text(CONFIG.format(run=tmp_path / "run", phases=phases, vhost=vhost))
    return main


def _check(main: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RPROXYD, "-t", "-c", str(main)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_every_shipped_example_passes_the_check(tmp_path, example):
    result = _check(_config(tmp_path, f'[phases]\nmodule = "{example}"\n'))
    assert result.returncode == 0, result.stderr
    assert "is OK" in result.stdout


def test_check_reports_every_phase_problem_with_config_key_and_module_line(tmp_path):
    module = phase_module(tmp_path, """
        from appliance.phases import Phases

        class Site(Phases):
            def request_filtr(self, req, ctx):
                return None

            def upstream_peer(self, req):
                return None
    """)
    main = _config(tmp_path, f'[phases]\nmodule = "{module}"\n\n[limits]\nheader_timeout = "soon"\n')
    result = _check(main)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f"rproxyd: {main}: phases.module: {module}:5: unknown phase request_filtr (did you mean " \
           "request_filter?); phases are " + ", ".join(PHASES) in lines
    assert f"rproxyd: {main}: phases.module: {module}:8: upstream_peer(self, req) does not match " \
           "upstream_peer(self, req, ctx)" in lines
    # The same one-pass list as every other problem.
    assert f"rproxyd: {main}: limits.header_timeout: expected a duration such as 10, \"10s\" or \"500ms\", " \
           "got 'soon'" in lines


def test_check_imports_in_a_child_so_a_crashing_module_cannot_hurt_it(tmp_path):
    module = phase_module(tmp_path, """
        import os
        print("chatter on stdout")  # must not be taken for the check's answer
        os._exit(7)
    """)
    result = _check(_config(tmp_path, f'[phases]\nmodule = "{module}"\n'))
    assert result.returncode == 1
    assert f"phases.module: {module}: the import check ended abnormally (exit status 7)" in result.stderr


def test_check_reports_an_import_error_at_its_line_and_ignores_what_the_module_prints(tmp_path):
    module = phase_module(tmp_path, """
        import os
        print("[[1, 2]]")
        os.write(1, b"[]")
        import no_such_module_here
    """)
    result = _check(_config(tmp_path, f'[phases]\nmodule = "{module}"\n'))
    assert result.returncode == 1
    assert (f"phases.module: {module}:5: importing failed: ModuleNotFoundError: No module named "
            "'no_such_module_here'") in result.stderr


def test_a_module_that_blocks_at_import_fails_the_check_in_bounded_time(tmp_path, monkeypatch):
    module = phase_module(tmp_path, "import threading\nthreading.Event().wait()\n")
    monkeypatch.setattr(check, "CHECK_TIMEOUT", 0.5)
    problems = check.run_check({"module": str(module), "class": "", "vhosts": [""]})
    assert problems == [(("phases", "module"), f"{module}: importing took longer than 0.5 s; a phases "
                         "module must not block at import")]


def test_vhost_and_class_keys_are_checked(tmp_path):
    main = _config(tmp_path, vhost='phases = "Site"')
    with pytest.raises(ConfigError) as raised:
        load(main)
    assert raised.value.problems == [f"{main}: vhost[0].phases: names a class but [phases] module is not set"]
    module = phase_module(tmp_path, "from appliance.phases import Phases\n\nclass Site(Phases):\n    pass\n")
    main = _config(tmp_path, f'[phases]\nmodule = "{module}"\nclass = "Other"\n', vhost='phases = "Gone"')
    with pytest.raises(ConfigError) as raised:
        load(main)
    assert raised.value.problems == [
        f"{main}: phases.class: {module}: no class Other (subclasses of Phases there: Site)",
        f"{main}: vhost[0].phases: {module}: no class Gone (subclasses of Phases there: Site)",
    ]
    main = _config(tmp_path, f'[phases]\nmodule = "{module}"\nclass = "Site"\n', vhost='phases = "Site"')
    config = load(main)
    assert (config.phases.class_name, config.vhost[0].phases) == ("Site", "Site")
