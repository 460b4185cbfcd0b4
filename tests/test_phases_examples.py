"""The logic of each shipped example in etc/rproxy/phases/examples, through the phase API.

Each example is imported the way rproxyd imports an operator's module, and its phases
are called with request and response views built from raw header lists, as the proxy
builds them. That they pass `rproxyd -t` is in tests/test_phases_api.py; running them
on the request path comes with its wiring.
"""

from __future__ import annotations

import hashlib
import json
from types import ModuleType

import pytest

from appliance.http.errors import BackendTimeout, BackendUnavailable
from appliance.phases import Peer, Request, Response, ResponseHead
from appliance.phases.loader import import_module
from tests.support.phases import EXAMPLES


def _example(name: str) -> ModuleType:
    return import_module(str(EXAMPLES / f"{name}.py"))


def _request(headers: list[tuple[bytes, bytes]], target: bytes = b"/", client: bytes = b"192.0.2.1",
             method: bytes = b"GET") -> Request:
    return Request(method, target, b"www.example.com", client, [(b"Host", b"www.example.com"), *headers],
                   "req-42")


def _response(status: int, headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    resp = ResponseHead(status, headers)
    resp.writable = True  # as in response_filter
    return resp


def test_api_key(tmp_path):
    module = _example("api_key")
    keys = tmp_path / "api-keys"
    keys.write_text(f"# clients\nbilling {hashlib.sha256(b's3cret').hexdigest()}\n")

    class ApiKey(module.ApiKey):
        keys_file = str(keys)

    phases = ApiKey()
    missing = phases.request_filter(_request([]), {})
    assert isinstance(missing, Response) and missing.status == 401
    assert json.loads(missing.body) == {"error": "an X-Api-Key header is required"}
    assert missing.headers.get("content-type") == "application/json"
    assert phases.request_filter(_request([(b"X-Api-Key", b"guess")]), {}).status == 403
    ctx = phases.new_ctx()
    req = _request([(b"x-api-key", b"s3cret")])
    assert phases.request_filter(req, ctx) is None and ctx == {"client": "billing"}
    req.writable = True  # as in upstream_request_filter
    phases.upstream_request_filter(req, ctx)
    assert req.raw_headers == [(b"Host", b"www.example.com"), (b"X-Api-Client", b"billing")]


def test_ab_routing_by_cookie():
    module = _example("ab_cookie")
    phases = module.ABRouting()
    ctx = phases.new_ctx()
    assert phases.upstream_peer(_request([(b"Cookie", b"theme=dark; ab=b")]), ctx) == "app_b"
    assert "assigned" not in ctx
    ctx = phases.new_ctx()
    assert phases.upstream_peer(_request([(b"Cookie", b"ab=a")]), ctx) is None
    # Without the cookie: a group from the address, the same every time, and a cookie set.
    groups = set()
    for last in range(200):
        ctx = phases.new_ctx()
        choice = phases.upstream_peer(_request([], client=b"198.51.100.%d" % last), ctx)
        assert choice == ("app_b" if ctx["assigned"] == "b" else None)
        assert phases.upstream_peer(_request([], client=b"198.51.100.%d" % last), phases.new_ctx()) == choice
        groups.add(ctx["assigned"])
        resp = _response(200, [])
        phases.response_filter(_request([]), resp, ctx)
        assert resp.headers.get("Set-Cookie").startswith(f"ab={ctx['assigned']}; Path=/")
    assert groups == {"a", "b"}
    assert module.cookie_value("a=1;ab=b", "ab") == "b" and module.cookie_value(None, "ab") is None


def test_canary_by_header():
    module = _example("canary")
    phases = module.Canary()
    canary = _request([(b"X-Canary", b"1")])
    expected = Peer("127.0.0.1:9090", connect_timeout=1.0, read_timeout=10.0)
    assert phases.upstream_peer(canary, None) == expected
    assert phases.upstream_peer(_request([(b"X-Canary", b"0")]), None) is None
    assert phases.upstream_peer(_request([]), None) is None
    canary.writable = True
    phases.upstream_request_filter(canary, None)
    assert "X-Canary" not in canary.headers


@pytest.mark.parametrize(("error", "status", "phrase"), [
    (BackendUnavailable("all servers down"), 503, "Service Unavailable"),
    (BackendTimeout("read"), 504, "Gateway Timeout"),
])
def test_json_error_page(error, status, phrase):
    phases = _example("json_errors").JsonErrors()
    resp = phases.fail_to_proxy(_request([]), error, None)
    assert resp.status == status
    assert json.loads(resp.body) == {"error": phrase, "status": status, "request_id": "req-42"}
    assert resp.headers.get("Content-Type") == "application/json"
    assert ("Retry-After" in resp.headers) == (status == 503)


def test_response_header_rewrite():
    phases = _example("header_rewrite").HeaderRewrite()
    resp = _response(302, [(b"Server", b"gunicorn"), (b"Location", b"http://app.internal:8080/login?next=/"),
                           (b"X-Powered-By", b"PHP"), (b"Content-Length", b"0")])
    phases.response_filter(_request([]), resp, None)
    assert resp.raw_headers == [
        (b"Location", b"https://www.example.com/login?next=/"), (b"Content-Length", b"0"),
        (b"X-Content-Type-Options", b"nosniff"), (b"Strict-Transport-Security", b"max-age=31536000")]
    kept = _response(200, [(b"Strict-Transport-Security", b"max-age=60"), (b"Location", b"https://other/")])
    phases.response_filter(_request([]), kept, None)
    assert kept.headers.get("strict-transport-security") == "max-age=60"
    assert kept.headers.get("location") == "https://other/"


def _filtered(phases, ctx, chunks: list[bytes]) -> bytes:
    out = [phases.response_body_filter(None, chunk, False, ctx) for chunk in chunks]
    out.append(phases.response_body_filter(None, b"", True, ctx))
    return b"".join(out)


def test_body_filter_replaces_a_string_cut_anywhere_between_chunks():
    module = _example("body_replace")
    phases = module.BodyReplace()
    body = b"<a href='" + module.OLD + b"x'>" + module.OLD + module.OLD + b"</a> tail"
    expected = body.replace(module.OLD, module.NEW)
    html = [(b"Content-Type", b"text/html; charset=utf-8")]
    for cut in range(len(body) + 1):
        for second_cut in (cut, min(cut + 7, len(body))):
            ctx = phases.new_ctx()
            phases.response_filter(None, _response(200, html), ctx)
            assert _filtered(phases, ctx, [body[:cut], body[cut:second_cut], body[second_cut:]]) == expected
    # One byte at a time, too.
    ctx = phases.new_ctx()
    phases.response_filter(None, _response(200, [(b"Content-Type", b"text/html")]), ctx)
    assert _filtered(phases, ctx, [body[i:i + 1] for i in range(len(body))]) == expected


@pytest.mark.parametrize("headers", [[(b"Content-Type", b"application/json")],
                                     [(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip")]])
def test_body_filter_leaves_other_bodies_alone(headers):
    module = _example("body_replace")
    phases = module.BodyReplace()
    ctx = phases.new_ctx()
    phases.response_filter(None, _response(200, headers), ctx)
    assert _filtered(phases, ctx, [module.OLD[:5], module.OLD[5:]]) == module.OLD


def test_structured_logging_of_selected_requests(tmp_path):
    module = _example("log_selected")
    log = tmp_path / "selected.log"

    class LogSelected(module.LogSelected):
        log_file = str(log)

    phases = LogSelected()
    ordinary = _request([(b"User-Agent", b"curl/8")], target=b"/shop")
    phases.logging(ordinary, ResponseHead(200, []), None, phases.new_ctx())
    phases.logging(ordinary, ResponseHead(502, []), None, phases.new_ctx())
    watched = _request([], target=b"/api/admin/users?page=2", method=b"DELETE")
    phases.logging(watched, ResponseHead(204, []), None, phases.new_ctx())
    phases.logging(ordinary, None, BackendTimeout("read"), phases.new_ctx())
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["method"], r["path"], r["status"], r["error"]) for r in records] == [
        ("GET", "/shop", 502, None), ("DELETE", "/api/admin/users", 204, None), ("GET", "/shop", 0, "read")]
    first = records[0]
    assert (first["request_id"], first["client"], first["host"], first["user_agent"]) == (
        "req-42", "192.0.2.1", "www.example.com", "curl/8")
    assert first["duration_ms"] >= 0
