"""h2 to backends (issue 17, item 3): rproxyd, asked in HTTP/1.1 (httpx, curl), speaks HTTP/2 to
real nginx (h2c by prior knowledge, and TLS with ALPN h2), retries the streams a GOAWAY left
unprocessed (a small h2 origin, tests/support/h2origin.py), and probes health over h2."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import shutil
import socket
import subprocess
import textwrap

import httpx
import pytest

from tests.support import RPROXYD, Origin, free_port, read_all, wait_for, wait_port
from tests.support.h2origin import GoawayOrigin
from tests.support.tls import make_certs

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """nginx 1.22 serving h2 only: h2c by prior knowledge on one port, TLS (ALPN h2) on another."""
    root = tmp_path_factory.mktemp("nginx")
    make_certs(root)  # a.test.pem (the server) and ca.pem (what rproxyd verifies it with)
    (root / "www").mkdir()
    (root / "www" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (root / "www" / "health").write_text("ok\n")
    plain, tls = free_port(), free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(textwrap.dedent(f"""
        {user}
        worker_processes 1;
        pid {root}/nginx.pid;
        error_log {root}/error.log;
        events {{ worker_connections 256; }}
        http {{
            access_log off;
            client_body_temp_path {root}/body;
            proxy_temp_path {root}/proxy;
            fastcgi_temp_path {root}/fastcgi;
            uwsgi_temp_path {root}/uwsgi;
            scgi_temp_path {root}/scgi;
            server {{
                listen 127.0.0.1:{plain} http2;
                listen 127.0.0.1:{tls} ssl http2;
                ssl_certificate {root}/a.test.pem;
                ssl_certificate_key {root}/a.test.pem;
                # Few streams per connection, so that rproxyd's pool must queue for them.
                http2_max_concurrent_streams 4;
                add_header X-Conn $connection always;
                root {root}/www;
                location = /proto {{
                    return 200 "$server_protocol $http_host $http_x_forwarded_for $http_connection\\n";
                }}
                location = /empty {{
                    return 204;
                }}
                location = /upload {{
                    client_max_body_size 100m;
                    client_body_buffer_size 16m;
                    return 200 "received $request_length\\n";
                }}
            }}
        }}
    """))
    proc = subprocess.Popen([NGINX, "-c", str(root / "nginx.conf"), "-g", "daemon off;"])
    wait_port(plain, proc=proc)
    wait_port(tls, proc=proc)
    yield {"plain": f"127.0.0.1:{plain}", "tls": f"127.0.0.1:{tls}", "root": root}
    proc.terminate()
    proc.wait(5)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_h2c_to_nginx_by_prior_knowledge(make_proxy, nginx):
    proxy = make_proxy(backends={"h2": [nginx["plain"]]}, backend_options='protocol = "h2"\n')
    with httpx.Client(timeout=30) as client:
        proto = client.get(proxy.url + "/proto", headers={"Host": "app.test", "Connection": "keep-alive"})
        big = client.get(proxy.url + "/big.bin")
        upload = client.post(proxy.url + "/upload", content=b"u" * 300_000)
    # nginx saw HTTP/2 with the client's Host as :authority, the proxy's X-Forwarded-For and no
    # Connection header (hop-by-hop, never on a stream).
    assert proto.status_code == 200
    assert proto.text.split() == ["HTTP/2.0", "app.test", "127.0.0.1"]
    assert big.status_code == 200 and hashlib.sha256(big.content).hexdigest() == digest(
        nginx["root"] / "www" / "big.bin")
    assert upload.status_code == 200 and upload.text.startswith("received ")
    assert proto.headers["via"] == "2 rproxyd"  # the backend's protocol version, as for HTTP/1


def test_a_response_head_that_ends_the_stream_completes_it(make_proxy, nginx):
    """A HEAD's answer and a 204 arrive as one HEADERS frame with END_STREAM (no DATA, no end of
    their own): each is a complete response, and the client's connection goes on."""
    proxy = make_proxy(backends={"h2": [nginx["plain"]]}, backend_options='protocol = "h2"\n')
    with httpx.Client(timeout=10) as client:
        head = client.head(proxy.url + "/health")
        empty = client.get(proxy.url + "/empty")
        after = client.get(proxy.url + "/health")
    assert head.status_code == 200 and head.headers["content-length"] == "3"
    assert empty.status_code == 204
    assert after.status_code == 200 and after.text == "ok\n"
    assert "reset the stream" not in proxy.log()


def test_many_concurrent_requests_share_one_h2_connection(make_proxy, nginx):
    """The pool counts streams: 40 requests at once over connections = 1 to a server that
    allows 4 streams per connection; the rest wait in the queue for a stream, not a connection."""
    proxy = make_proxy(backends={"h2": [nginx["plain"]]},
                       backend_options='protocol = "h2"\nconnections = 1\n')
    expected = digest(nginx["root"] / "www" / "big.bin")
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=40)) as client, \
            concurrent.futures.ThreadPoolExecutor(40) as pool:
        responses = list(pool.map(lambda _: client.get(proxy.url + "/big.bin"), range(40)))
    assert [response.status_code for response in responses] == [200] * 40
    assert all(hashlib.sha256(response.content).hexdigest() == expected for response in responses)
    assert len({response.headers["x-conn"] for response in responses}) == 1


def test_h2_over_tls_with_alpn_to_nginx(make_proxy, nginx):
    root = nginx["root"]
    proxy = make_proxy(backends={"h2tls": [nginx["tls"]]}, backend_options=f"""
        protocol = "h2"
        tls = true
        tls_ca = "{root}/ca.pem"
        tls_sni = "a.test"
    """)
    result = subprocess.run(["curl", "-sS", "-H", "Host: app.test", proxy.url + "/proto"],
                            capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.split()[:2] == ["HTTP/2.0", "app.test"]
    big = httpx.get(proxy.url + "/big.bin", timeout=30)
    assert hashlib.sha256(big.content).hexdigest() == digest(root / "www" / "big.bin")


def test_goaway_from_the_backend_retries_the_unprocessed_stream(make_proxy):
    origin = GoawayOrigin()
    try:
        proxy = make_proxy(backends={"h2": [origin.address]}, backend_options='protocol = "h2"\n')
        with httpx.Client(timeout=30) as client:
            first = client.get(proxy.url + "/one")
            # Stream 3 on the first connection is answered by GOAWAY(last_stream_id=1): sent
            # again on a new connection, a POST too (unprocessed: safe whatever the method).
            second = client.get(proxy.url + "/two")
        # The POST's head and body in one segment: the whole request is here when it goes to
        # the backend, so it is kept for a replay (a body already streamed away is not).
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"POST /three HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n"
                         b"Connection: close\r\n\r\n" + b"p" * 1000)
            third = read_all(sock, 30)
    finally:
        origin.close()
    assert (first.status_code, first.text) == (200, "conn 1: GET /one 0\n")
    assert second.status_code == 200 and second.text.endswith(": GET /two 0\n")
    assert third.startswith(b"HTTP/1.1 200 ") and third.endswith(b": POST /three 1000\n")
    assert origin.connections >= 3
    assert "did not process the request" in proxy.log()


def test_health_probe_over_h2(make_proxy, nginx):
    """The h2 server passes its probe; a server that speaks HTTP/1 only fails it and is DOWN."""
    h1_only = Origin("h1")
    try:
        proxy = make_proxy(backends={"h2": [nginx["plain"], h1_only.address]}, backend_options="""
            protocol = "h2"
            [backend.h2.health]
            path = "/health"
            interval = "0.1s"
            rise = 1
            fall = 1
        """)
        wait_for(lambda: f"server {h1_only.address} is DOWN (active probe)" in proxy.log(), 15,
                 "the HTTP/1-only server marked down")
        statuses = {httpx.get(proxy.url + "/health", timeout=10).status_code for _ in range(6)}
    finally:
        h1_only.stop()
    assert statuses == {200}
    assert not re.search(rf"server {re.escape(nginx['plain'])} is DOWN", proxy.log())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_streamed_request_body_ends_its_stream(make_proxy, framing):
    """The origin answers once the stream ends: after the last Content-Length byte, or after
    the client's last chunk (as a DATA frame with END_STREAM)."""
    origin = GoawayOrigin()
    size = 3 * 1024 * 1024
    try:
        proxy = make_proxy(backends={"h2": [origin.address]}, backend_options='protocol = "h2"\n')
        body = b"b" * size if framing == "content-length" else (b"c" * (size // 8) for _ in range(8))
        response = httpx.post(proxy.url + "/upload", content=body, timeout=30)
    finally:
        origin.close()
    assert (response.status_code, response.text) == (200, f"conn 1: POST /upload {size}\n")


def test_h2_with_proxy_protocol_is_refused_by_the_check(tmp_path):
    config = tmp_path / "rproxy.toml"
    config.write_text(textwrap.dedent("""
        [[listener]]
        bind = "127.0.0.1:0"
        [backend.app]
        servers = ["127.0.0.1:9"]
        protocol = "h2"
        proxy_protocol = "v1"
        [[vhost]]
        name = "default"
        hosts = ["*"]
        [[vhost.route]]
        path = "/"
        backend = "app"
    """))
    result = subprocess.run([RPROXYD, "-t", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "backend.app.protocol" in result.stderr and "proxy_protocol" in result.stderr


def test_trailers_cross_both_ways(make_proxy):
    """A chunked request's trailers go out as a trailing HEADERS; the backend's response
    trailers come back in the client's chunked response (its TE: trailers asked for them)."""
    origin = GoawayOrigin()
    try:
        proxy = make_proxy(backends={"h2": [origin.address]}, backend_options='protocol = "h2"\n')
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"POST /trailers HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
                         b"TE: trailers\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n")
            response = read_all(sock, 30)
    finally:
        origin.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
    assert b"conn 1: POST /trailers 5 trailers x-sum=5\n" in body
    assert body.endswith(b"0\r\nx-origin-trailer: 1\r\n\r\n")
