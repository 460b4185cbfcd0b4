"""Bad input gets a clear answer; backend faults get 502/503/504; nothing crashes a worker."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import struct
import threading
import time

import httpx
import pytest

from tests.support import (
    ScriptedBackend,
    free_port,
    raw_exchange,
    read_all,
    read_until_close,
    recv_until,
    status_codes,
    wait_for,
)

SMALL_LIMITS = """
max_header_bytes = "1k"
max_body_bytes = 1000
header_timeout = "1s"
keepalive_timeout = "1s"
body_timeout = "1s"
"""


@pytest.fixture
def proxy(make_proxy, origin):
    return make_proxy(backends={"demo": [origin.address]}, limits=SMALL_LIMITS)


def _answer(raw: bytes) -> tuple[int, bool]:
    """The one status code in a raw reply, and whether it announced a close."""
    codes = status_codes(raw)
    assert len(codes) == 1, raw
    return codes[0], b"Connection: close" in raw


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="not-http"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http11-without-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", id="space-in-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", id="slash-in-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost:\r\n\r\n", id="empty-host"),
        pytest.param(b"GET http://user@b/ HTTP/1.1\r\nHost: a\r\n\r\n", id="userinfo"),
        pytest.param(b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", id="fragment"),
        pytest.param(b"GET /\r\n\r\n", id="http09"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", id="bare-lf"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", id="bare-cr"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", id="space-before-colon"),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n", id="cl-and-te"),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            id="two-content-lengths"),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc", id="te-not-chunked"),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
            id="te-chunked-not-final"),
        pytest.param(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            id="bad-chunk-size"),
        pytest.param(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", id="connect"),
    ],
)
def test_malformed_request_gets_400_and_close(proxy, request_bytes):
    status, closed = _answer(raw_exchange(proxy.port, request_bytes))
    assert status == 400 and closed


def test_unknown_expectation_gets_417(proxy):
    status, closed = _answer(raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nExpect: tea\r\n\r\n"))
    assert status == 417 and closed


def test_smuggled_request_never_reaches_backend(make_proxy):
    backend = ScriptedBackend(_ok_forever)
    proxy = make_proxy(backends={"b": [backend.address]})
    attack = (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n")
    assert _answer(raw_exchange(proxy.port, attack))[0] == 400
    assert not any(b"/admin" in request for request in backend.requests)
    backend.stop()


def test_header_block_over_limit_gets_431(proxy):
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    status, closed = _answer(raw_exchange(proxy.port, big))
    assert status == 431 and closed


def test_unfinished_huge_header_is_cut_at_limit(proxy):
    # No end of head ever comes: the proxy answers 431 once past the limit and drops the
    # rest (lingering close) instead of buffering it.
    rss_before = proxy.rss_kib()
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
        with contextlib.suppress(OSError):
            for _ in range(2000):
                sock.sendall(b"a" * 4096)
        raw = read_all(sock, 5)
    assert status_codes(raw) == [431]
    assert proxy.alive() and proxy.rss_kib() - rss_before < 16 * 1024


def test_declared_body_over_limit_gets_413_before_upload(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        status, closed = _answer(read_all(sock, 5))
    assert status == 413 and closed


def test_chunked_body_over_limit_gets_413(proxy):
    chunk = b"%x\r\n%s\r\n" % (600, b"b" * 600)
    raw = raw_exchange(proxy.port, b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + chunk + chunk + b"0\r\n\r\n")
    assert status_codes(raw) in ([413], [])  # 413, or a cut connection if the response had begun
    assert status_codes(raw) == [413]


def test_no_route_gets_404(make_proxy, origin):
    proxy = make_proxy(backends={"demo": [origin.address]}, routes=[("/api/", "demo")])
    assert httpx.get(proxy.url + "/elsewhere").status_code == 404
    assert httpx.get(proxy.url + "/api/x").status_code == 404  # the origin's own 404
    assert "rproxyd" in httpx.get(proxy.url + "/elsewhere").headers["server"]


def test_refused_backend_gets_502_then_503_while_down(make_proxy):
    proxy = make_proxy(backends={"gone": [f"127.0.0.1:{free_port()}"]},
                       backend_options='retry_delay = "200ms"')
    time.sleep(0.5)  # the warm-up connect failed; its back-off has passed
    assert httpx.get(proxy.url + "/").status_code == 502  # this request's own connect was refused
    # Now in back-off (400 ms): with every server DOWN the answer is 503 at once.
    down = httpx.get(proxy.url + "/")
    assert down.status_code == 503 and down.headers["retry-after"] == "1"


def _reset(conn: socket.socket, backend: ScriptedBackend) -> None:
    backend.read_head(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_backend_reset_gets_502(make_proxy):
    backend = ScriptedBackend(_reset)
    proxy = make_proxy(backends={"b": [backend.address]})
    # A POST is never replayed, so the reset reaches the client as 502.
    assert httpx.post(proxy.url + "/", content=b"x").status_code == 502
    backend.stop()


def _garbage(conn: socket.socket, backend: ScriptedBackend) -> None:
    backend.read_head(conn)
    conn.sendall(b"HTTP/1.1 2OO NOT OK\r\n\r\n")


def test_invalid_backend_response_gets_502(make_proxy):
    backend = ScriptedBackend(_garbage)
    proxy = make_proxy(backends={"b": [backend.address]})
    assert httpx.get(proxy.url + "/").status_code == 502
    backend.stop()


def _answers_with(response: bytes):
    """A backend handler that answers every request on its connection with `response`."""
    def answer(conn: socket.socket, backend: ScriptedBackend) -> None:
        while backend.read_head(conn) is not None:
            conn.sendall(response)
    return answer


def test_unsolicited_response_never_reaches_the_client(make_proxy):
    # A second response in the same write as the first, with no request for it: the client
    # gets the first only; the next request goes out on a new backend connection.
    backend = ScriptedBackend(_answers_with(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                                            b"HTTP/1.1 200 Injected\r\nContent-Length: 3\r\n\r\nbad"))
    proxy = make_proxy(backends={"b": [backend.address]})
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            raw = recv_until(sock, b"hello")
            assert status_codes(raw) == [200] and b"Injected" not in raw, raw
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(65536)  # and nothing after it
    assert backend.connections >= 2  # the first connection was not reused
    backend.stop()


def test_a_final_response_after_a_1xx_has_its_own_version(make_proxy):
    # The status line the read begins with (HTTP/1.1 100) is not the final response's: that
    # one is HTTP/1.0 without keep-alive, so the backend connection is not reused, and the
    # response's Via names the backend's 1.0.
    backend = ScriptedBackend(_answers_with(b"HTTP/1.1 100 Continue\r\n\r\n"
                                            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    proxy = make_proxy(backends={"b": [backend.address]})
    with httpx.Client() as client:
        responses = [client.get(proxy.url + "/") for _ in range(2)]
    backend.stop()
    assert [r.status_code for r in responses] == [200, 200]
    assert all(r.headers["via"].startswith("1.0 ") for r in responses), responses[0].headers
    assert backend.connections == 2


def test_headers_named_by_connection_are_removed_from_responses(make_proxy):
    backend = ScriptedBackend(_answers_with(
        b"HTTP/1.1 200 OK\r\nX-Before: 1\r\nConnection: x-before, X-After\r\nX-After: 2\r\n"
        b"X-Kept: 3\r\nContent-Length: 2\r\n\r\nok"))
    proxy = make_proxy(backends={"b": [backend.address]})
    response = httpx.get(proxy.url + "/")
    backend.stop()
    assert response.status_code == 200 and response.headers["x-kept"] == "3"
    assert "x-before" not in response.headers and "x-after" not in response.headers


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"chunked, gzip", b"gzip"])
def test_response_transfer_coding_other_than_chunked_gets_502(make_proxy, coding):
    backend = ScriptedBackend(_answers_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n5\r\nhello\r\n0\r\n\r\n" % coding))
    proxy = make_proxy(backends={"b": [backend.address]}, backend_options="max_fails = 0")
    assert httpx.get(proxy.url + "/").status_code == 502
    backend.stop()


def _endless_header(conn: socket.socket, backend: ScriptedBackend) -> None:
    backend.read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Endless: ")
    with contextlib.suppress(OSError):  # until the proxy gives up on us
        for _ in range(64 * 1024):  # 1 GiB at most, far beyond the limit
            conn.sendall(b"a" * 16384)


def test_endless_response_head_gets_502_and_bounded_memory(make_proxy):
    backend = ScriptedBackend(_endless_header)
    proxy = make_proxy(backends={"b": [backend.address]},
                       backend_options='max_response_header_bytes = "64k"\nmax_fails = 0')
    rss_before = proxy.rss_kib()
    response = httpx.get(proxy.url + "/", timeout=30)
    assert response.status_code == 502
    assert proxy.rss_kib() - rss_before < 16 * 1024  # the head was cut at 64 KiB, not buffered
    assert "response head or trailers too large" in proxy.log()
    backend.stop()


def _send_endless(sock: socket.socket, start: bytes) -> None:
    """`start`, then an endless header value, until the peer stops taking it (64 MiB at most)."""
    sock.sendall(start)
    with contextlib.suppress(OSError):
        for _ in range(4096):
            sock.sendall(b"a" * 16384)


def test_endless_request_trailer_gets_431_and_bounded_memory(proxy):
    rss_before = proxy.rss_kib()
    with socket.create_connection(("127.0.0.1", proxy.port), 10) as sock:
        sender = threading.Thread(target=_send_endless, args=(sock, (
            b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: ")))
        sender.start()
        answer = recv_until(sock, b"\r\n\r\n", timeout=10)
        sender.join(30)
    assert status_codes(answer) == [431]
    assert proxy.rss_kib() - rss_before < 16 * 1024


def _endless_trailer(conn: socket.socket, backend: ScriptedBackend) -> None:
    backend.read_head(conn)
    _send_endless(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: ")


def test_endless_response_trailer_cuts_the_response_with_bounded_memory(make_proxy):
    backend = ScriptedBackend(_endless_trailer)
    proxy = make_proxy(backends={"b": [backend.address]}, backend_options="max_fails = 0")
    rss_before = proxy.rss_kib()
    with pytest.raises(httpx.RemoteProtocolError):  # the head went out: the client sees a cut
        httpx.get(proxy.url + "/", timeout=30)
    assert proxy.rss_kib() - rss_before < 16 * 1024
    assert "response head or trailers too large" in proxy.log()
    backend.stop()


def test_slow_backend_gets_504(make_proxy, origin):
    proxy = make_proxy(backends={"demo": [origin.address]}, backend_options='read_timeout = "300ms"')
    started = time.monotonic()
    assert httpx.get(proxy.url + "/delay/3", timeout=10).status_code == 504
    assert time.monotonic() - started < 2.5
    # The pool recovers: the next request is served.
    assert httpx.get(proxy.url + "/").status_code == 200


def _silent(conn: socket.socket, backend: ScriptedBackend) -> None:
    backend.read_head(conn)
    time.sleep(3)


def test_pending_queue_overflow_and_timeout_get_503(make_proxy):
    backend = ScriptedBackend(_silent)
    proxy = make_proxy(
        backends={"b": [backend.address]},
        backend_options='connections = 1\nread_timeout = "5s"',
        limits='max_pending = 1\npending_timeout = "500ms"',
    )
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        busy = pool.submit(httpx.get, proxy.url + "/busy", timeout=10)
        wait_for(lambda: backend.requests, 5, "/busy to take the one connection")
        queued = pool.submit(httpx.get, proxy.url + "/queued", timeout=10)
        time.sleep(0.1)
        overflow = httpx.get(proxy.url + "/overflow", timeout=10)
        assert overflow.status_code == 503 and overflow.headers["retry-after"] == "1"
        started = time.monotonic()
        timed_out = queued.result()
        assert timed_out.status_code == 503 and "retry-after" in timed_out.headers
        assert time.monotonic() - started < 1.5
        busy.cancel()
    backend.stop()


def _keepalive_then_close(conn: socket.socket, backend: ScriptedBackend) -> None:
    # Answers one request per connection, then closes it after a short idle time,
    # as servers with a short keep-alive timeout do.
    if backend.read_head(conn) is None:
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    time.sleep(0.2)


def test_backend_closing_idle_connections_never_becomes_502(make_proxy):
    backend = ScriptedBackend(_keepalive_then_close)
    proxy = make_proxy(backends={"b": [backend.address]})
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(proxy.url + "/").status_code == 200
            time.sleep(0.4)
    backend.stop()


def _close_second_request(conn: socket.socket, backend: ScriptedBackend) -> None:
    # Serves the first request, then takes the next one and closes without an answer:
    # the race where a backend closes an idle connection just as the proxy reuses it.
    if backend.read_head(conn) is None:
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    backend.read_head(conn)


def test_reused_connection_closed_unanswered_retries_idempotent_only(make_proxy):
    backend = ScriptedBackend(_close_second_request)
    proxy = make_proxy(backends={"b": [backend.address]}, backend_options="connections = 1")
    with httpx.Client() as client:
        for _ in range(4):
            assert client.get(proxy.url + "/get").status_code == 200
        posts = [client.post(proxy.url + "/post", content=b"once").status_code for _ in range(2)]
    assert 502 in posts  # a POST whose connection died is answered 502...
    sent = [r for r in backend.requests if r.startswith(b"POST")]
    assert len(sent) == 2  # ...and was never sent twice
    backend.stop()


def _ok_forever(conn: socket.socket, backend: ScriptedBackend) -> None:
    while backend.read_head(conn) is not None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_header_timeout_gets_408(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        status, closed = _answer(read_all(sock, 5))
    assert status == 408 and closed


@pytest.mark.parametrize("before", [b"", b"GET /bytes/1 HTTP/1.1\r\nHost: a\r\n\r\n"],
                         ids=["first", "pipelined"])
def test_head_left_unfinished_gets_408_after_header_timeout(proxy, before):
    # A pipelined head behind a whole request, sent in the same write, has its header timeout
    # too: the whole request is answered, then the unfinished one gets 408.
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(before + b"GET /bytes/2 HTTP/1.1\r\nHo")
        started = time.monotonic()
        raw, closed = read_until_close(sock, 5)
    assert status_codes(raw) == ([200, 408] if before else [408])
    assert closed and 0.8 < time.monotonic() - started < 3  # header_timeout is 1 s


@pytest.mark.parametrize("keep_alive", [False, True], ids=["first-request", "after-a-response"])
def test_head_trickled_in_still_gets_408_at_header_timeout(proxy, keep_alive):
    # Slowloris: a byte every 0.2 s never lets the head finish, and must not push its deadline on.
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        if keep_alive:
            sock.sendall(b"GET /bytes/1 HTTP/1.1\r\nHost: a\r\n\r\n")
            recv_until(sock, b"\r\n\r\nx")
        started = time.monotonic()
        sent = b""
        with contextlib.suppress(OSError):
            for byte in b"GET /bytes/2 HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 40:
                sock.sendall(bytes([byte]))
                sent += bytes([byte])
                time.sleep(0.2)
                if time.monotonic() - started > 4:
                    break
        raw, closed = read_until_close(sock, 5)
    assert status_codes(raw) == [408] and closed
    assert len(sent) < 20  # cut off near header_timeout (1 s), not after the 4 s of trickling


def test_head_held_unread_by_a_full_pipeline_is_not_timed_out(make_proxy, origin):
    # With the pipeline full the proxy stops reading: the rest of the last head waits unread in
    # the socket past header_timeout. That is not the client's delay, so no 408.
    proxy = make_proxy(backends={"demo": [origin.address]},
                       limits=SMALL_LIMITS + "max_pipelined = 2\n")
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET /delay/2 HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /bytes/1 HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /bytes/2 HTTP/1.1\r\nHo")
        time.sleep(0.3)
        sock.sendall(b"st: a\r\nConnection: close\r\n\r\n")
        raw, closed = read_until_close(sock, 6)
    assert status_codes(raw) == [200, 200, 200] and closed


def test_idle_keepalive_connection_closed_quietly(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        started = time.monotonic()
        raw = read_all(sock, 5)
    assert status_codes(raw) == [200]
    assert 0.8 < time.monotonic() - started < 3


def test_connection_idle_again_after_more_requests_still_closed_by_keepalive_timeout(proxy):
    # Each idle spell drops the connection's parser and the next request bytes make a new one
    # (issue 15): requests after an idle spell, pipelined and cut across writes, still parse,
    # and the connection idle after them is still closed at keepalive_timeout.
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET /bytes/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        first = recv_until(sock, b"\r\n\r\nx")
        sock.sendall(b"GET /bytes/2 HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/3 HTTP/1.1\r\nHo")
        second = recv_until(sock, b"\r\n\r\nxx")
        sock.sendall(b"st: a\r\n\r\n")
        rest, closed = read_until_close(sock, 5)
    assert status_codes(first) == [200]
    assert status_codes(second + rest) == [200, 200]
    assert rest.endswith(b"\r\n\r\nxxx")
    assert closed  # by keepalive_timeout (1 s), quietly, within the 5 s of silence allowed


def test_request_cut_by_a_close_is_never_seen_on_another_connection(proxy):
    # Parsers are not carried from one connection to the next: the half head a client left
    # behind when it closed must not become the start of another client's request.
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"GET /bytes/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        recv_until(sock, b"\r\n\r\nx")
        sock.sendall(b"GET /bytes/1 HTTP/1.1\r\nHost: a\r\nX-Left-Behind: 1")
    for _ in range(3):
        raw = raw_exchange(proxy.port, b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_codes(raw) == [200]
        assert b"left-behind" not in raw.lower()


@pytest.mark.parametrize(("sent", "answers"), [
    (b"GET / HT", []),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/3 HTTP/1.1\r\nHo", [200]),
], ids=["alone", "after-a-whole-request"])
def test_stream_ending_inside_a_request_head(proxy, sent, answers):
    # The cut request can never be whole: it is dropped unanswered at once (as nginx does),
    # not answered 408 when header_timeout runs out; a whole request before it is answered.
    raw = raw_exchange(proxy.port, sent, timeout=5, shut_write=True)
    assert status_codes(raw) == answers


def test_client_silent_mid_body_gets_408(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        raw = read_all(sock, 5)
    assert status_codes(raw) == [408]
    assert 0.8 < time.monotonic() - started < 3  # body_timeout is 1 s


def _never_reads(conn: socket.socket, backend: ScriptedBackend) -> None:
    backend.read_head(conn)
    time.sleep(5)


def test_backend_not_reading_the_body_gets_504(make_proxy):
    backend = ScriptedBackend(_never_reads)
    proxy = make_proxy(backends={"b": [backend.address]}, backend_options='write_timeout = "500ms"')

    def body():
        block = b"u" * (1024 * 1024)
        for _ in range(256):  # far beyond what the socket buffers hold
            yield block

    started = time.monotonic()
    response = httpx.post(proxy.url + "/upload", content=body(), timeout=10)
    assert response.status_code == 504
    assert time.monotonic() - started < 4
    assert proxy.alive()
    backend.stop()
