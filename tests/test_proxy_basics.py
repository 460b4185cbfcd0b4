"""The everyday path: methods, bodies both ways, framing, keep-alive, forwarded headers."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time

import httpx
import pytest

from tests.support import curl, read_all, recv_until, status_codes, wait_for


@pytest.fixture
def proxy(make_proxy, origin):
    return make_proxy(backends={"demo": [origin.address]})


def test_get_through_proxy_with_curl(proxy):
    result = curl("-i", proxy.url + "/")
    assert result.returncode == 0
    assert result.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Hello from the rproxyd demo origin" in result.stdout
    assert b"\r\nVia: 1.1 rproxyd\r\n" in result.stdout


def test_forwarded_headers_appended_and_hop_by_hop_removed(proxy):
    headers = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "spoofed",
        "X-Forwarded-Host": "spoofed.example",
        "Connection": "keep-alive, X-Secret",
        "X-Secret": "hop",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Connection": "keep-alive",
        "Upgrade": "h2c",
        "Via": "1.0 edge",
    }
    response = httpx.get(proxy.url + "/headers", headers=headers)
    seen = {name.lower(): value for name, value in response.json()["headers"]}
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"
    assert seen["via"] == "1.0 edge, 1.1 rproxyd"
    for hop in ("connection", "x-secret", "keep-alive", "te", "proxy-connection", "upgrade"):
        assert hop not in seen, hop


def test_content_length_and_chunked_uploads_round_trip(proxy):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    with httpx.Client() as client:
        fixed = client.post(proxy.url + "/echo", content=payload)
        chunked = client.post(proxy.url + "/echo", content=iter([payload[:1000], payload[1000:]]))
    assert fixed.status_code == 200 and fixed.content == payload
    assert chunked.status_code == 200 and chunked.content == payload


def test_chunked_and_length_downloads(proxy):
    with httpx.Client() as client:
        fixed = client.get(proxy.url + "/bytes/5000000")
        chunked = client.get(proxy.url + "/chunked/3000000")
    assert len(fixed.content) == 5000000 and fixed.headers["content-length"] == "5000000"
    assert len(chunked.content) == 3000000
    assert chunked.headers["transfer-encoding"] == "chunked"


def test_response_trailers_forwarded(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET /trailers HTTP/1.1\r\nHost: t\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        raw = read_all(sock, 5)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"5\r\nhello\r\n0\r\nX-Checksum: 5d41402a\r\n\r\n"


def test_head_204_304_have_no_body_and_keep_alive(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(
            b"HEAD /bytes/1000 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /status/304 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        raw = read_all(sock, 5)
    assert status_codes(raw) == [200, 204, 304, 200]
    assert b"Content-Length: 1000\r\n" in raw  # HEAD keeps the length, sends no body
    assert raw.endswith(b"Hello from the rproxyd demo origin\n")
    assert raw.count(b"xxxx") == 0


def test_pipelined_requests_answered_in_order(proxy):
    paths = ["/bytes/10", "/delay/0.2", "/bytes/3", "/chunked/5", "/headers"]
    request = b"".join(b"GET %s HTTP/1.1\r\nHost: p\r\n\r\n" % p.encode() for p in paths)
    request += b"GET /bytes/1 HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(request)
        raw = read_all(sock, 5)
    assert status_codes(raw) == [200] * 6
    markers = (b"\r\n\r\nxxxxxxxxxxHTTP", b"slept\n", b'"path": "/headers"')
    order = [raw.find(marker) for marker in markers]
    assert order == sorted(order) and -1 not in order
    assert raw.endswith(b"\r\n\r\nx")


def _reset_by_peer(sock: socket.socket) -> bool:
    """Whether the peer has answered with a reset. After its FIN recv() keeps returning b"",
    so the reset shows as the socket's pending error (EPIPE once the FIN came)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (errno.EPIPE, errno.ECONNRESET)


@pytest.mark.parametrize("request_head", [
    b"GET /bytes/3 HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    b"GET /bytes/3 HTTP/1.0\r\n\r\n",
], ids=["http11-connection-close", "http10"])
def test_client_that_said_close_gets_a_plain_close(proxy, request_head):
    # RFC 9112 9.6: a client that announced its last request sends nothing after it, so
    # once that request was read whole the proxy closes its socket outright, as nginx does,
    # instead of a lingering close (FIN, then reading until the client's FIN or 2 s). Seen
    # from the client: bytes sent after the response's EOF meet a closed socket (a reset),
    # where a lingering close would read and drop them.
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(request_head)
        raw = read_all(sock, 5)
        assert status_codes(raw) == [200] and raw.endswith(b"\r\n\r\nxxx")
        sock.sendall(b"late")
        wait_for(lambda: _reset_by_peer(sock), 5, "a reset from the proxy's closed socket")


@pytest.mark.parametrize("last_request", [
    b"GET /bytes/3 HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    b"GET /bytes/3 HTTP/1.0\r\n\r\n",
], ids=["http11-connection-close", "http10"])
def test_request_after_a_connection_close_request_is_dropped_and_the_close_lingers(proxy, last_request):
    # Bytes after the announced last request: the proxy drops them (as nginx and HAProxy do),
    # still answers the request before them, and closes with a lingering close, so its
    # answer is not lost to a reset while the client still sends.
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(last_request + b"GET /bytes/4 HTTP/1.1\r\nHost: c\r\n\r\n")
        raw = read_all(sock, 5)
        assert status_codes(raw) == [200] and raw.endswith(b"\r\n\r\nxxx")
        sock.sendall(b"late")
        assert not _reset_by_peer(sock)


def test_http10_client_gets_pooled_backend_and_closed_response(proxy, origin):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET /chunked/4 HTTP/1.0\r\n\r\n")
        raw = read_all(sock, 5)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"xxxx"  # de-chunked for HTTP/1.0, delimited by the close


def test_http10_keep_alive_when_asked(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET /bytes/2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = recv_until(sock, b"\r\n\r\nxx")
        sock.sendall(b"GET /bytes/3 HTTP/1.0\r\n\r\n")
        second = read_all(sock, 5)
    assert b"Connection: keep-alive" in first and first.endswith(b"\r\n\r\nxx")
    assert second.endswith(b"\r\n\r\nxxx") and b"Connection: close" in second


def test_pipelined_http10_after_http11_in_one_read_is_answered_as_http10(proxy):
    # The first request line of a read says HTTP/1.1; the second request, in the same read,
    # is HTTP/1.0 with no Host: it is answered as 1.0 (no Host needed, the connection closes).
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET /bytes/2 HTTP/1.1\r\nHost: c\r\n\r\nGET /bytes/3 HTTP/1.0\r\n\r\n")
        raw = read_all(sock, 5)
    assert status_codes(raw) == [200, 200], raw
    first, _, second = raw.partition(b"\r\n\r\nxx")
    assert b"Connection: close" not in first and b"Connection: close" in second
    assert second.endswith(b"\r\n\r\nxxx")


def test_an_idle_connections_next_request_gets_its_own_version_checks(proxy):
    # The connection keeps its parser between requests from its second idle spell on (the
    # third request here): each request's version is still its own (a 1.0 one needs no Host,
    # a 1.1 one does), whatever the one before it said.
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET /bytes/2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert recv_until(sock, b"\r\n\r\nxx").startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /bytes/3 HTTP/1.1\r\nHost: c\r\n\r\n")
        assert recv_until(sock, b"\r\n\r\nxxx").startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /bytes/3 HTTP/1.1\r\n\r\n")
        raw = read_all(sock, 5)
    assert status_codes(raw) == [400], raw


def test_a_request_line_split_across_reads_keeps_its_version(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET /bytes/3 HTTP/1.")
        time.sleep(0.2)
        sock.sendall(b"0\r\n\r\n")
        raw = read_all(sock, 5)
    assert status_codes(raw) == [200] and b"Connection: close" in raw and raw.endswith(b"xxx")


def test_expect_100_continue(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = recv_until(sock, b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        raw = read_all(sock, 5)
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\nhello")


def test_curl_large_upload_uses_expect(proxy, tmp_path):
    payload = os.urandom(2 * 1024 * 1024)
    source = tmp_path / "upload.bin"
    source.write_bytes(payload)
    result = curl("-H", "Expect: 100-continue", "--data-binary", f"@{source}", proxy.url + "/echo")
    assert result.returncode == 0
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(payload).digest()


def test_absolute_form_target_uses_its_authority(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET http://example.test/headers HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n")
        raw = read_all(sock, 5)
    info = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert info["path"] == "/headers"
    assert ["Host", "example.test"] in info["headers"]


def test_keep_alive_reuses_one_client_connection(proxy):
    with httpx.Client() as client:
        for _ in range(50):
            assert client.get(proxy.url + "/").status_code == 200


def test_more_clients_than_pooled_connections_keep_alive(make_proxy, origin):
    """Requests served from the pending queue still leave their client connection open."""
    import concurrent.futures

    proxy = make_proxy(backends={"demo": [origin.address]}, backend_options="connections = 2")

    def client_run(_: int) -> list[str]:
        with httpx.Client() as client:
            return [client.get(proxy.url + "/delay/0.01").headers.get("connection", "keep-alive")
                    for _ in range(15)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        seen = [value for values in pool.map(client_run, range(8)) for value in values]
    assert seen == ["keep-alive"] * 120
