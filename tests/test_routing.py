"""Virtual hosts, rules, rewriting and header policy, through real origins."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from appliance.config.docs import documented_examples
from tests.support import (
    RPROXYD,
    ScriptedBackend,
    read_all,
    served_by,
    status_codes,
    wait_connected_to,
    wait_for,
)
from tests.support.replay import REPLAY_BODY, put, read_request

VHOSTS = """
[[vhost]]
name = "api"
hosts = ["api.example.com", "*.api.example.com"]

[[vhost.route]]
match = "exact"
path = "/exact"
backend = "b"

[[vhost.route]]
match = "regex"
path = "^/v[0-9]+/"
backend = "c"

[[vhost.route]]
match = "glob"
path = "/files/*.txt"
backend = "b"

[[vhost.route]]
path = "/"
backend = "a"

[[vhost]]
name = "www"
hosts = ["www.example.com"]
default = true

[[vhost.route]]
path = "/only-get"
methods = ["GET", "HEAD"]
backend = "a"

[[vhost.route]]
path = "/old/"
rewrite = "^/old/(?P<rest>.*)$"
rewrite_to = "/headers?from=${rest}"
backend = "b"

[[vhost.route]]
path = "/keep/"
rewrite = "^/keep/(.*)$"
rewrite_to = "/$1"
backend = "b"

[[vhost.route]]
path = "/"
backend = "c"
"""


@pytest.fixture(scope="module")
def routed(origins, tmp_path_factory):
    from tests.support import Proxy, free_port, proxy_config

    port = free_port()
    text = proxy_config(port, {name: [o.address] for name, o in origins.items()}, vhosts=VHOSTS)
    proxy = Proxy(tmp_path_factory.mktemp("routed"), text, port)
    yield proxy
    proxy.stop()


def get(proxy, path: str, host: str, method: str = "GET") -> httpx.Response:
    return httpx.request(method, proxy.url + path, headers={"Host": host})


@pytest.mark.parametrize(
    ("host", "path", "origin"),
    [
        ("api.example.com", "/exact", "b"),
        ("api.example.com", "/exact/more", "a"),  # exact does not match longer paths
        ("eu.api.example.com", "/v2/users", "c"),  # glob alias; regex rule
        ("api.example.com", "/files/readme.txt", "b"),
        ("api.example.com", "/files/readme.md", "a"),
        ("API.Example.COM:8443", "/", "a"),  # case and port do not matter
        ("www.example.com", "/anything", "c"),
        ("unknown.test", "/anything", "c"),  # the default vhost
    ],
)
def test_vhost_and_rule_selection(routed, host, path, origin):
    assert served_by(get(routed, path, host)) == origin


def test_first_matching_rule_wins_in_file_order(origins, make_proxy):
    vhosts = """
    [[vhost]]
    name = "x"
    hosts = ["*"]
    [[vhost.route]]
    match = "glob"
    path = "/a*"
    backend = "a"
    [[vhost.route]]
    match = "exact"
    path = "/abc"
    backend = "b"
    [[vhost.route]]
    match = "exact"
    path = "/xyz"
    backend = "b"
    [[vhost.route]]
    match = "glob"
    path = "/x*"
    backend = "c"
    """
    proxy = make_proxy(backends={n: [o.address] for n, o in origins.items()}, vhosts=vhosts)
    assert served_by(httpx.get(proxy.url + "/abc")) == "a"  # the earlier glob beats the exact rule
    assert served_by(httpx.get(proxy.url + "/xyz")) == "b"  # the earlier exact beats the glob


def test_no_default_vhost_means_404(origins, make_proxy):
    vhosts = '[[vhost]]\nname = "only"\nhosts = ["only.test"]\n[[vhost.route]]\nbackend = "a"\n'
    proxy = make_proxy(backends={"a": [origins["a"].address]}, vhosts=vhosts)
    assert httpx.get(proxy.url + "/", headers={"Host": "only.test"}).status_code == 200
    assert httpx.get(proxy.url + "/", headers={"Host": "other.test"}).status_code == 404


def test_method_match_and_405(routed):
    assert served_by(get(routed, "/only-get", "www.example.com")) == "a"
    assert served_by(get(routed, "/only-get", "www.example.com", "HEAD")) == "a"
    refused = get(routed, "/only-get", "www.example.com", "POST")
    # The catch-all "/" rule takes any method, so a POST falls through to it.
    assert served_by(refused) == "c"


def test_405_when_only_method_restricted_rules_match(origins, make_proxy):
    vhosts = ('[[vhost]]\nname = "x"\nhosts = ["*"]\n'
              '[[vhost.route]]\npath = "/"\nmethods = ["GET"]\nbackend = "a"\n')
    proxy = make_proxy(backends={"a": [origins["a"].address]}, vhosts=vhosts)
    response = httpx.post(proxy.url + "/", content=b"x")
    assert response.status_code == 405 and response.headers["allow"] == "GET"


def test_trace_is_refused_unless_the_route_allows_it(origins, make_proxy):
    # As nginx (405): TRACE echoes the request, cookies and credentials included, back to
    # whoever can make a browser send it.
    vhosts = """
    [[vhost]]
    name = "x"
    hosts = ["*"]
    [[vhost.route]]
    path = "/debug/"
    rewrite = "^/debug(/.*)$"
    rewrite_to = "$1"
    allow_trace = true
    backend = "a"
    [[vhost.route]]
    path = "/"
    backend = "a"
    """
    proxy = make_proxy(backends={"a": [origins["a"].address]}, vhosts=vhosts)
    with httpx.Client() as client:
        refused = client.request("TRACE", proxy.url + "/headers")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
        assert "x-origin" not in refused.headers
        forwarded = client.request("TRACE", proxy.url + "/debug/headers")
        assert served_by(forwarded) == "a" and forwarded.json()["method"] == "TRACE"
        assert client.get(proxy.url + "/").status_code == 200  # the 405 kept the connection


def test_rewrite_replaces_query_when_the_replacement_has_one(routed):
    info = get(routed, "/old/some/thing?dropped=1", "www.example.com").json()
    assert info["path"] == "/headers?from=some/thing"


def test_rewrite_keeps_the_query(routed):
    info = get(routed, "/keep/headers?x=1&y=2", "www.example.com").json()
    assert info["path"] == "/headers?x=1&y=2"


def test_header_policy_per_vhost_and_rule(origins, make_proxy):
    vhosts = """
    [[vhost]]
    name = "x"
    hosts = ["*"]
    request_headers = { set = { X-Env = "prod" }, remove = ["X-Debug"] }
    response_headers = { remove = ["Server"], add = { X-Frame-Options = "DENY" } }
    [[vhost.route]]
    path = "/"
    backend = "a"
    request_headers = { add = { X-Rule = "one" }, set = { X-Env = "rule" } }
    response_headers = { set = { X-Origin = "hidden" } }
    """
    proxy = make_proxy(backends={"a": [origins["a"].address]}, vhosts=vhosts)
    response = httpx.get(proxy.url + "/headers", headers={"X-Debug": "1", "X-Env": "client"})
    seen = {}
    for name, value in response.json()["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    assert seen["x-env"] == ["rule"]
    assert seen["x-rule"] == ["one"]
    assert "x-debug" not in seen
    assert "server" not in response.headers
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-origin"] == "hidden"


def test_spoofed_proxy_headers_are_stripped(origins, make_proxy):
    proxy = make_proxy(backends={"a": [origins["a"].address]})
    spoof = {"X-SSL-Client-Subject": "CN=admin", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "evil.test"}
    names = {n.lower(): v for n, v in httpx.get(proxy.url + "/headers", headers=spoof).json()["headers"]}
    assert "x-ssl-client-subject" not in names
    assert names["x-forwarded-proto"] == "http"
    assert names["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"


def test_untrusted_client_x_forwarded_for_is_replaced(origins, make_proxy):
    proxy = make_proxy(backends={"a": [origins["a"].address]},
                       extra='[proxy]\ntrusted_proxies = ["10.0.0.0/8"]\n')
    headers = httpx.get(proxy.url + "/headers", headers={"X-Forwarded-For": "6.6.6.6"}).json()["headers"]
    assert ["X-Forwarded-For", "127.0.0.1"] in headers


def test_trusted_client_x_forwarded_for_is_appended(origins, make_proxy):
    proxy = make_proxy(backends={"a": [origins["a"].address]},
                       extra='[proxy]\ntrusted_proxies = ["127.0.0.0/8"]\n')
    headers = httpx.get(proxy.url + "/headers", headers={"X-Forwarded-For": "6.6.6.6"}).json()["headers"]
    assert ["X-Forwarded-For", "6.6.6.6, 127.0.0.1"] in headers


def real_ips(proxy, sent: dict[str, str]) -> list[str]:
    """The X-Real-IP values the backend got for a request carrying `sent`."""
    headers = httpx.get(proxy.url + "/headers", headers=sent).json()["headers"]
    return [value for name, value in headers if name.lower().replace("_", "-") == "x-real-ip"]


@pytest.mark.parametrize("trusted", ['["10.0.0.0/8"]', None], ids=["untrusted", "default-trust-everyone"])
def test_forged_x_real_ip_is_replaced_by_the_client_address(origins, make_proxy, trusted):
    # Trusting everyone (the default) vouches for nobody's address: X-Real-IP is what nginx's
    # $remote_addr is without set_real_ip_from, the peer's address.
    proxy = make_proxy(backends={"a": [origins["a"].address]},
                       extra=f"[proxy]\ntrusted_proxies = {trusted}\n" if trusted else "")
    assert real_ips(proxy, {}) == ["127.0.0.1"]
    assert real_ips(proxy, {"X-Real-IP": "6.6.6.6"}) == ["127.0.0.1"]
    assert real_ips(proxy, {"X_Real_IP": "6.6.6.6"}) == ["127.0.0.1"]


def test_trusted_proxy_x_real_ip_is_kept(origins, make_proxy):
    proxy = make_proxy(backends={"a": [origins["a"].address]},
                       extra='[proxy]\ntrusted_proxies = ["127.0.0.0/8"]\n')
    assert real_ips(proxy, {"X-Real-IP": "6.6.6.6"}) == ["6.6.6.6"]
    assert real_ips(proxy, {}) == ["127.0.0.1"]


def _redirecting(conn: socket.socket, backend: ScriptedBackend) -> None:
    while (head := backend.read_head(conn)) is not None:
        target = b"/headers" if b"GET /go " in head else b"/elsewhere"
        conn.sendall(b"HTTP/1.1 377 Internal Redirect\r\nX-Internal-Redirect: " + target
                     + b"\r\nContent-Length: 4\r\n\r\nskip")


def test_internal_redirect_replays_to_allowed_target_only(origins, make_proxy):
    backend = ScriptedBackend(_redirecting)
    vhosts = """
    [[vhost]]
    name = "x"
    hosts = ["*"]
    [[vhost.route]]
    path = "/go"
    backend = "redirector"
    internal_redirect = ["/headers"]
    [[vhost.route]]
    path = "/deny"
    backend = "redirector"
    internal_redirect = ["/headers"]
    [[vhost.route]]
    path = "/"
    backend = "a"
    """
    proxy = make_proxy(backends={"redirector": [backend.address], "a": [origins["a"].address]},
                       vhosts=vhosts)
    replayed = httpx.get(proxy.url + "/go")
    assert replayed.status_code == 200 and replayed.json()["path"] == "/headers"
    assert served_by(replayed) == "a"
    assert httpx.get(proxy.url + "/deny").status_code == 502  # /elsewhere is not allowed
    backend.stop()


REDIRECT_VHOSTS = """
[[vhost]]
name = "x"
hosts = ["*"]
[[vhost.route]]
path = "/upload"
backend = "redirector"
internal_redirect = ["/done"]
[[vhost.route]]
path = "/done"
backend = "target"
"""


REDIRECT_TO_DONE = b"HTTP/1.1 377 Internal Redirect\r\nX-Internal-Redirect: /done\r\nContent-Length: 4\r\n"


def _redirect_whole_requests(conn: socket.socket, backend: ScriptedBackend) -> None:
    while read_request(conn, backend) is not None:
        conn.sendall(REDIRECT_TO_DONE + b"\r\nskip")


def _redirect_at_head(conn: socket.socket, backend: ScriptedBackend) -> None:
    """Redirects as soon as the head is in, before the body, then closes."""
    if backend.read_head(conn) is not None:
        conn.sendall(REDIRECT_TO_DONE + b"Connection: close\r\n\r\nskip")


def _answer_ok(conn: socket.socket, backend: ScriptedBackend) -> None:
    while read_request(conn, backend) is not None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")


def redirect_pair(make_proxy, redirecting: Callable[[socket.socket, ScriptedBackend], None]) -> tuple:
    """A proxy whose /upload backend redirects to /done (whose backend records what it gets)."""
    redirector = ScriptedBackend(redirecting)
    target = ScriptedBackend(_answer_ok)
    proxy = make_proxy(backends={"redirector": [redirector.address], "target": [target.address]},
                       vhosts=REDIRECT_VHOSTS)
    return proxy, redirector, target


@pytest.mark.parametrize(("method", "chunked", "wait_for_connection"), [
    ("POST", False, True), ("POST", True, True), ("POST", False, False), ("PUT", False, True),
], ids=["post-length-streamed", "post-chunked-streamed", "post-buffered", "put"])
def test_internal_redirect_of_a_request_with_a_body_is_a_get_without_it(make_proxy, method, chunked,
                                                                         wait_for_connection):
    # As nginx's X-Accel-Redirect: the redirected request is a GET, and the body is not sent again.
    proxy, redirector, target = redirect_pair(make_proxy, _redirect_whole_requests)
    if wait_for_connection:
        wait_connected_to([redirector.port])  # the body streams to the redirector
    status, head, body = put(proxy.port, "/upload", REPLAY_BODY, chunked, method=method)
    redirector.stop()
    target.stop()
    assert (status, body) == (200, b"done")
    assert b"Connection: close" in head  # put() asks for it
    assert redirector.requests[0].startswith(method.encode() + b" /upload ")
    redirected, = target.requests
    assert redirected.startswith(b"GET /done HTTP/1.1\r\n") and redirected.endswith(b"\r\n\r\n")
    assert not re.search(rb"(?im)^(content-length|transfer-encoding):", redirected)


def test_internal_redirect_of_head_stays_head(make_proxy):
    proxy, redirector, target = redirect_pair(make_proxy, _redirect_whole_requests)
    response = httpx.head(proxy.url + "/upload")
    redirector.stop()
    target.stop()
    assert response.status_code == 200 and response.headers["content-length"] == "4"
    assert target.requests[0].startswith(b"HEAD /done HTTP/1.1\r\n")


@pytest.mark.parametrize("copies", [1000, 10000], ids=["copied", "spliced"])  # splice_min_bytes: 64 KiB
def test_internal_redirect_while_the_body_streams_answers_then_closes(make_proxy, copies):
    """The redirect comes before the client has sent its whole body: the rest is not read, and
    the connection closes after the answer, so body bytes are never taken for a request."""
    proxy, redirector, target = redirect_pair(make_proxy, _redirect_at_head)
    wait_connected_to([redirector.port])
    smuggled = b"GET /upload HTTP/1.1\r\nHost: t\r\n\r\n"
    body = smuggled * copies
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body[:100]))
        wait_for(lambda: redirector.requests, 5, "the redirector to get the request")
        sock.sendall(body[100:-100])  # more of the body, which now goes nowhere; not the end
        raw = read_all(sock, 5)
    redirector.stop()
    target.stop()
    assert status_codes(raw) == [200] and raw.endswith(b"\r\n\r\ndone")
    assert b"\r\nConnection: close\r\n" in raw
    assert len(redirector.requests) == 1
    redirected, = target.requests
    assert redirected.startswith(b"GET /done HTTP/1.1\r\n") and b"Content-Length" not in redirected


def _echo_request_line(name: bytes):
    """A backend handler answering every request with its name and the request line it got."""
    def answer(conn: socket.socket, backend: ScriptedBackend) -> None:
        while (head := backend.read_head(conn)) is not None:
            body = name + b" " + head.split(b" HTTP/1.1\r\n", 1)[0]
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return answer


@pytest.mark.parametrize(("target", "answer"), [
    (b"/public/x?q=/../a", b"public GET /public/x?q=/../a"),  # the query is not a path
    (b"/public/../admin", b"admin GET /admin"),
    (b"/public/%2e%2E/admin", b"admin GET /admin"),  # escaped dots are dots
    (b"//admin//x", b"admin GET /admin/x"),
    (b"/admin/../public/./x", b"public GET /public/x"),
    (b"/public/%7euser/%2fx", b"public GET /public/~user/%2Fx"),  # %2F is not a separator
    (b"http://a/admin/../public/", b"public GET /public/"),
    (b"/public/../../etc/passwd", b"400"),
], ids=lambda v: v.decode())
def test_paths_are_normalized_before_routing(make_proxy, target, answer):
    # Routing on the raw path would send /public/../admin to the public backend, which then
    # serves /admin: the path is normalized first, and the backend gets what was routed.
    public = ScriptedBackend(_echo_request_line(b"public"))
    admin = ScriptedBackend(_echo_request_line(b"admin"))
    proxy = make_proxy(backends={"pub": [public.address], "adm": [admin.address]},
                       routes=[("/admin", "adm"), ("/public/", "pub")])
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % target)
        head, _, body = read_all(sock, 5).partition(b"\r\n\r\n")
    public.stop()
    admin.stop()
    if answer == b"400":
        assert head.startswith(b"HTTP/1.1 400 ") and not public.requests and not admin.requests
    else:
        assert head.startswith(b"HTTP/1.1 200 ") and body == answer


def test_pipelined_requests_across_vhosts(routed):
    with socket.create_connection(("127.0.0.1", routed.port), 5) as sock:
        sock.sendall(b"GET /exact HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
                     b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
        raw = read_all(sock, 5)
    assert raw.index(b"X-Origin: b") < raw.index(b"X-Origin: c")


# What the documented examples lean on: a listener, the backends they name, a vhost.
EXAMPLE_BASE = """
[[listener]]
name = "http"
bind = "127.0.0.1:8080"

[backend.app]
servers = ["127.0.0.1:9"]
[backend.api]
servers = ["127.0.0.1:9"]
[backend.auth]
servers = ["127.0.0.1:9"]
[backend.files]
servers = ["127.0.0.1:9"]
[backend.ops]
servers = ["127.0.0.1:9"]
[backend.static]
servers = ["127.0.0.1:9"]

[[vhost]]
name = "base"
hosts = ["base.test"]
[[vhost.route]]
backend = "app"
"""


@pytest.mark.parametrize(("title", "toml"), [pytest.param(*e, id=e[0]) for e in documented_examples()])
def test_documented_examples_are_valid_configuration(tmp_path, title, toml):
    # Each example of docs/configuration.md goes in conf.d, as a user would add it.
    main = tmp_path / "rproxy.toml"
    main.write_text(EXAMPLE_BASE)
    (tmp_path / "conf.d").mkdir()
    # The phases examples are installed in /etc/rproxy; here they are in the source tree.
    shipped = Path(__file__).resolve().parent.parent / "etc/rproxy/phases/examples"
    toml = toml.replace("/etc/rproxy/phases/examples", str(shipped))
    (tmp_path / "conf.d" / "example.toml").write_text(toml)
    checked = subprocess.run([RPROXYD, "-t", "-c", str(main)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
