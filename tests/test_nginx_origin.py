"""Interop with a real third-party origin: nginx serving static files and echoing uploads."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import textwrap
import time

import httpx
import pytest

from tests.support import free_port, read_all, wait_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    root = tmp_path_factory.mktemp("nginx")
    (root / "www").mkdir()
    (root / "www" / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (root / "www" / "index.html").write_text("<h1>nginx origin</h1>\n")
    port = free_port()
    conf = root / "nginx.conf"
    # As root, nginx workers would switch to "nobody", who cannot read pytest's private tmp dirs.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(textwrap.dedent(f"""
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
            keepalive_requests 10000;
            server {{
                listen 127.0.0.1:{port};
                root {root}/www;
                location = /upload {{
                    client_max_body_size 100m;
                    client_body_buffer_size 16m;
                    # Reading the body makes nginx accept it; the digest is checked by the client.
                    return 200 "received $request_length\\n";
                }}
            }}
        }}
    """))
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-g", "daemon off;"])
    wait_port(port, proc=proc)
    yield {"address": f"127.0.0.1:{port}", "root": root}
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def proxy(make_proxy, nginx):
    return make_proxy(backends={"nginx": [nginx["address"]]})


def test_static_file_through_the_proxy(proxy, nginx):
    expected = hashlib.sha256((nginx["root"] / "www" / "big.bin").read_bytes()).hexdigest()
    with httpx.Client() as client:
        for _ in range(3):
            response = client.get(proxy.url + "/big.bin")
            assert response.status_code == 200
            assert hashlib.sha256(response.content).hexdigest() == expected
        head = client.head(proxy.url + "/big.bin")
    assert head.headers["content-length"] == str(5 * 1024 * 1024) and head.content == b""


def test_conditional_and_range_requests(proxy):
    with httpx.Client() as client:
        first = client.get(proxy.url + "/index.html")
        cached = client.get(proxy.url + "/index.html",
                            headers={"If-Modified-Since": first.headers["last-modified"]})
        partial = client.get(proxy.url + "/big.bin", headers={"Range": "bytes=100-199"})
    assert cached.status_code == 304 and cached.content == b""
    assert partial.status_code == 206 and len(partial.content) == 100
    assert partial.headers["content-range"].startswith("bytes 100-199/")


def test_chunked_upload_to_nginx(proxy):
    def body():
        for _ in range(8):
            yield os.urandom(1024 * 1024)

    response = httpx.post(proxy.url + "/upload", content=body(), timeout=30)
    assert response.status_code == 200 and response.text.startswith("received ")


def test_keep_alive_pool_is_reused(proxy):
    started = time.monotonic()
    with httpx.Client() as client:
        for _ in range(200):
            assert client.get(proxy.url + "/index.html").status_code == 200
    assert time.monotonic() - started < 30


def test_http10_request_without_host_reaches_nginx_with_one(proxy):
    """HTTP/1.0 needs no Host, but the head sent on is HTTP/1.1, which does: nginx answers 400
    (and closes its keep-alive connection) to a Host-less HTTP/1.1 request. `openssl s_time
    -www` sends exactly such requests, so the TLS benchmark depends on this."""
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
            sock.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            raw = read_all(sock, 5)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw[:200]
        assert raw.endswith(b"<h1>nginx origin</h1>\n")
