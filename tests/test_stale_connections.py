"""Reused backend connections the origin has closed: stale, never a server failure.

The origin here is the demo origin with --max-requests: it closes every keep-alive
connection after its Nth response without a `Connection: close` header, as app servers
with a per-connection request limit do. Issue 13 item 1: 2,000 POSTs at concurrency 8
through the proxy to one such server once gave 1,937 answers of 503, because each
stale connection counted as a failure and the lone server was marked DOWN.
"""

from __future__ import annotations

import collections
import http.client
import re
import socket
import threading

import httpx

from tests.support import Origin, ScriptedBackend, read_all, running, status_codes


def _post_load(port: int, total: int, concurrency: int) -> collections.Counter:
    """Statuses (or client-side error names) of `total` small keep-alive POSTs, `concurrency` at a time.

    Each thread keeps one http.client connection open for its share, as a keep-alive
    client does; the connection reopens only if the proxy closes it.
    """
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def client(share: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        seen: collections.Counter = collections.Counter()
        for i in range(share):
            try:
                conn.request("POST", "/echo", body=b"order %d" % i, headers={"Content-Type": "text/plain"})
                response = conn.getresponse()
                response.read()
                seen[response.status] += 1
            except (OSError, http.client.HTTPException) as exc:
                seen[type(exc).__name__] += 1
                conn.close()
        conn.close()
        with lock:
            counts.update(seen)

    threads = [threading.Thread(target=client, args=(total // concurrency,)) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def test_origin_closing_every_fifth_connection_is_no_outage(make_proxy):
    # nginx on this load: 1,948 x 200 and 52 x 502, never a 503.
    origin = Origin("limited", max_requests=5)
    with running(origin):
        proxy = make_proxy(backends={"app": [origin.address]})
        counts = _post_load(proxy.port, 2000, 8)
    assert counts[503] == 0, counts
    assert counts[502] < 52, counts
    assert counts[200] + counts[502] == 2000, counts


def _answer_then_close(conn: socket.socket, backend: ScriptedBackend) -> None:
    # One response per connection, its last bytes and the FIN in one segment (corked, then
    # shut): the proxy reads the response and the EOF is already waiting behind it.
    if backend.read_head(conn) is None:
        return
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    conn.shutdown(socket.SHUT_WR)
    backend.read_head(conn)  # whatever still arrives on the half-closed connection is recorded


def test_connection_closed_with_its_last_response_is_not_reused(make_proxy):
    # Pipelined: the POST is dispatched while the GET's response is handled, in the same read
    # as that response, before the loop reads the EOF behind it. The reuse check sees the FIN:
    # the POST goes out once, on a new connection, and is answered.
    backend = ScriptedBackend(_answer_then_close)
    with running(backend):
        proxy = make_proxy(backends={"b": [backend.address]}, backend_options="connections = 1")
        with socket.create_connection(("127.0.0.1", proxy.port), 10) as sock:
            sock.sendall(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
                         b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                         b"Connection: close\r\n\r\nonce")
            answers = read_all(sock, 10)
    assert status_codes(answers) == [200, 200], answers
    assert [r.split(b" ", 2)[:2] for r in backend.requests] == [[b"GET", b"/first"], [b"POST", b"/second"]]
    assert backend.connections == 2


def _close_second_request(conn: socket.socket, backend: ScriptedBackend) -> None:
    # Answers the first request; reads the second and closes without an answer: the backend
    # may have acted on it, so only a request that may be sent twice is sent again.
    request = backend.read_head(conn)
    if request is None:
        return
    # The whole body first: answered before it, the response would be an early one, after
    # which the proxy rightly closes both connections (a race on a loaded machine).
    head, _, body = request.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    while length and len(body) < int(length[1]):
        piece = conn.recv(65536)
        if not piece:
            return
        body += piece
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    backend.read_head(conn)


def test_stale_connection_is_no_server_failure(make_proxy):
    # Every second POST meets a reused connection the backend closes unanswered: 502 (a POST
    # is never sent twice), but never a 503: these are not failures of the lone server.
    backend = ScriptedBackend(_close_second_request)
    with running(backend):
        proxy = make_proxy(backends={"b": [backend.address]},
                           backend_options='connections = 1\nmax_fails = 2\ndown_time = "30s"')
        with httpx.Client() as client:
            codes = [client.post(proxy.url + "/", content=b"once").status_code for _ in range(10)]
    assert codes == [200, 502] * 5, codes
    assert len(backend.requests) == 10  # each POST sent once
    assert "DOWN" not in proxy.log() and "kept in rotation" not in proxy.log()


def test_request_with_idempotency_key_is_resent_on_a_stale_connection(make_proxy):
    backend = ScriptedBackend(_close_second_request)
    with running(backend):
        proxy = make_proxy(backends={"b": [backend.address]}, backend_options="connections = 1")
        # Without a body: a body that went out as it arrived is never sent twice, whatever
        # the headers say (docs/routing.md).
        with httpx.Client() as client:
            codes = [client.post(proxy.url + "/", headers={"Idempotency-Key": f"k{i}"}).status_code
                     for i in range(3)]
    assert codes == [200, 200, 200], codes
    # Each connection answers once: the second and third POSTs met a stale one and went out twice.
    assert len(backend.requests) == 5


def _server_error(conn: socket.socket, backend: ScriptedBackend) -> None:
    while backend.read_head(conn) is not None:
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nX-Origin: %d\r\nContent-Length: 0\r\n\r\n"
                     % backend.port)


def test_last_usable_server_is_never_marked_down_by_passive_failures(make_proxy):
    # nginx: "If there is only a single server in a group, max_fails ... are ignored". The
    # failures are still noted (with two servers, test_passive_health_on_5xx_takes_a_server_out
    # in test_balancing.py shows the failing one is taken out).
    bad = ScriptedBackend(_server_error)
    with running(bad):
        proxy = make_proxy(backends={"b": [bad.address]},
                           backend_options='fail_on_5xx = true\nmax_fails = 2\ndown_time = "30s"')
        with httpx.Client() as client:
            codes = [client.get(proxy.url + "/").status_code for _ in range(6)]
    assert codes == [500] * 6, codes
    assert "kept in rotation: it is the last usable server of backend b" in proxy.log()


def test_of_two_failing_servers_only_the_first_is_marked_down(make_proxy):
    # Both fail every request: the first to reach max_fails is taken out, the other is then
    # the last usable one and stays (its 500s reach the clients, never a 503).
    first, second = ScriptedBackend(_server_error), ScriptedBackend(_server_error)
    with running(first, second):
        proxy = make_proxy(backends={"b": [first.address, second.address]},
                           backend_options='balance = "round-robin"\nfail_on_5xx = true\n'
                                           'max_fails = 2\ndown_time = "30s"')
        with httpx.Client() as client:
            answers = [client.get(proxy.url + "/") for _ in range(8)]
    assert [r.status_code for r in answers] == [500] * 8
    by = collections.Counter(r.headers["x-origin"] for r in answers)
    assert by == {str(first.port): 2, str(second.port): 6}, by
    log = proxy.log()
    assert log.count("is DOWN") == 1 and f"server {first.address} is DOWN" in log
    assert f"server {second.address}: 2 failures" in log and "kept in rotation" in log
