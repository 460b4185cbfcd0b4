"""Every balancing method, health checks and failover, against several real origins."""

from __future__ import annotations

import collections
import concurrent.futures
import re
import socket
import threading
import time

import httpx
import pytest

from appliance.config.values import Address
from appliance.upstream.balance import ConsistentHash
from tests.support import (
    Origin,
    ScriptedBackend,
    free_port,
    served_by,
    wait_connected_to,
    wait_dropped,
    wait_for,
)
from tests.support.replay import REPLAY_BODY, Handler, on_new_connections, put, read_request


def tally(url: str, count: int, headers: dict | None = None) -> collections.Counter:
    with httpx.Client() as client:
        return collections.Counter(served_by(client.get(url, headers=headers)) for _ in range(count))


def balanced_proxy(make_proxy, servers: list[str], method: str, options: str = "",
                   dropping: ScriptedBackend | None = None):
    """rproxyd balancing over `servers`, once every server's warm-up connection is open.

    Until it is, a request the balancer sends to a server still connecting is served by
    whichever connection is ready first. `dropping`: a server that closes the warm
    connection (on_new_connections); it is waited for until the proxy has seen it closed.
    """
    proxy = make_proxy(backends={"pool": servers}, backend_options=f'balance = "{method}"\n{options}')
    ports = [int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", " ".join(servers))]
    if dropping is not None:
        ports.remove(dropping.port)
        wait_dropped(dropping)
    wait_connected_to(ports)
    return proxy


def test_round_robin_is_even(origins, make_proxy):
    proxy = balanced_proxy(make_proxy, [o.address for o in origins.values()], "round-robin")
    assert tally(proxy.url + "/", 60) == {"a": 20, "b": 20, "c": 20}


def test_weighted_round_robin_follows_weights(origins, make_proxy):
    weights = zip(origins.values(), (1, 2, 3), strict=True)
    servers = [f'{{address = "{o.address}", weight = {w}}}' for o, w in weights]
    proxy = balanced_proxy(make_proxy, servers, "weighted-round-robin")
    assert tally(proxy.url + "/", 60) == {"a": 10, "b": 20, "c": 30}


def test_random_reaches_every_server_evenly(origins, make_proxy):
    proxy = balanced_proxy(make_proxy, [o.address for o in origins.values()], "random")
    counts = tally(proxy.url + "/", 300)
    assert set(counts) == {"a", "b", "c"}
    assert all(60 <= n <= 140 for n in counts.values()), counts  # expected 100, sd about 8


def _slow(conn: socket.socket, backend: ScriptedBackend) -> None:
    while backend.read_head(conn) is not None:
        time.sleep(0.3)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Origin: slow\r\nContent-Length: 2\r\n\r\nok")


def _concurrent_tally(url: str, total: int, parallel: int) -> collections.Counter:
    def one(_: int) -> str:
        return served_by(httpx.get(url, timeout=30))

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        return collections.Counter(pool.map(one, range(total)))


@pytest.mark.parametrize("method", ["least-conn", "most-idle"])
def test_busy_aware_methods_favour_the_fast_server(origins, make_proxy, method):
    slow = ScriptedBackend(_slow)
    proxy = balanced_proxy(make_proxy, [slow.address, origins["a"].address], method)
    counts = _concurrent_tally(proxy.url + "/", 60, 6)
    slow.stop()
    assert counts["a"] >= 40, counts  # round-robin would give 30


def test_rtt_prefers_the_lowest_latency(origins, make_proxy):
    slow = ScriptedBackend(_slow)
    proxy = balanced_proxy(make_proxy, [slow.address, origins["a"].address], "rtt")
    counts = tally(proxy.url + "/", 20)
    slow.stop()
    assert counts["a"] >= 18, counts  # each server measured once, then the fast one wins


def _keyed_request(hash_key: str, key: int, attempt: int) -> tuple[str, dict[str, str], str]:
    """Path, headers and client address of a request whose hash key is number `key`.

    `attempt` only varies what the key must ignore: the query, other cookies, the port.
    """
    if hash_key == "client-ip":
        return f"/?attempt={attempt}", {}, f"127.0.0.{key + 2}"  # all of 127/8 is loopback
    if hash_key == "path":
        return f"/bytes/{key}?attempt={attempt}", {}, "127.0.0.1"
    if hash_key == "cookie:session":
        return "/", {"Cookie": f"attempt={attempt}; session=s{key}"}, "127.0.0.1"
    return "/", {"X-User": f"user-{key}"}, "127.0.0.1"


@pytest.mark.parametrize("hash_key", ["client-ip", "path", "header:X-User", "cookie:session"])
def test_hash_is_sticky_per_key_and_spreads_keys(origins, make_proxy, hash_key):
    proxy = balanced_proxy(make_proxy, [o.address for o in origins.values()], "hash",
                           f'hash_key = "{hash_key}"')
    owners = {}
    for key in range(30):
        seen = set()
        for attempt in range(5):
            path, headers, client_ip = _keyed_request(hash_key, key, attempt)
            # A new connection per request: stickiness must not come from connection reuse.
            with httpx.Client(transport=httpx.HTTPTransport(local_address=client_ip)) as client:
                seen.add(served_by(client.get(proxy.url + path, headers=headers)))
        assert len(seen) == 1, (key, seen)  # every request with one key lands on one server
        owners[key] = seen.pop()
    assert set(owners.values()) == {"a", "b", "c"}, owners


class _FakeServer:
    def __init__(self, port: int, host: str = "10.0.0.1") -> None:
        self.address = Address(host, port)
        self.weight = 1


class _FakeExchange:
    def __init__(self, key: bytes) -> None:
        self.key = key


def test_ketama_ring_moves_only_the_keys_of_a_leaving_server():
    servers = [_FakeServer(port) for port in range(8001, 8005)]
    ring = ConsistentHash(servers, key=lambda exchange: exchange.key)
    keys = [_FakeExchange(b"key-%d" % i) for i in range(4000)]
    before = {e.key: ring.pick(servers, e) for e in keys}
    shares = collections.Counter(id(s) for s in before.values())
    assert all(700 < n < 1300 for n in shares.values()), shares
    leaving = servers[1]
    remaining = [s for s in servers if s is not leaving]
    after = {e.key: ring.pick(remaining, e) for e in keys}
    moved = [k for k in before if before[k] is not after[k]]
    assert moved and all(before[k] is leaving for k in moved)  # nobody else's keys move


def test_connect_failure_fails_over_to_the_next_server(origins, make_proxy):
    dead = f"127.0.0.1:{free_port()}"
    proxy = balanced_proxy(make_proxy, [dead, origins["a"].address], "round-robin",
                           'retry_delay = "50ms"\nmax_fails = 100')
    with httpx.Client() as client:
        for _ in range(20):
            time.sleep(0.06)  # let the dead server's back-off lapse, so it is tried each time
            assert client.get(proxy.url + "/").status_code == 200


def _hang_up(conn: socket.socket, backend: ScriptedBackend) -> None:
    # Reads each request and closes without an answer.
    backend.read_head(conn)


def test_get_is_retried_elsewhere_and_post_is_never_sent_twice(origins, make_proxy):
    broken = ScriptedBackend(_hang_up)
    proxy = balanced_proxy(make_proxy, [broken.address, origins["a"].address], "round-robin",
                           "max_fails = 0")
    with httpx.Client() as client:
        gets = [client.get(proxy.url + "/").status_code for _ in range(10)]
        posts = [client.post(proxy.url + "/echo", content=b"once").status_code for _ in range(10)]
    assert gets == [200] * 10
    assert posts.count(502) >= 3  # the ones that went to the broken server
    sent_posts = [r for r in broken.requests if r.startswith(b"POST")]
    assert len(sent_posts) == posts.count(502)  # each sent exactly once
    broken.stop()


def test_retry_budget_caps_retries(origins, make_proxy):
    broken = ScriptedBackend(_hang_up)
    proxy = balanced_proxy(make_proxy, [broken.address, origins["a"].address], "round-robin",
                           "max_fails = 0\nretry_budget_percent = 0")
    with httpx.Client() as client:
        codes = collections.Counter(client.get(proxy.url + "/").status_code for _ in range(40))
    broken.stop()
    # Half the requests meet the broken server; the floor of 10 retries saves 10 of them.
    assert codes[502] == 10 and codes[200] == 30, codes


def _server_error(conn: socket.socket, backend: ScriptedBackend) -> None:
    while backend.read_head(conn) is not None:
        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nX-Origin: bad\r\nContent-Length: 0\r\n\r\n")


def test_passive_health_on_5xx_takes_a_server_out(origins, make_proxy):
    bad = ScriptedBackend(_server_error)
    proxy = balanced_proxy(make_proxy, [bad.address, origins["a"].address], "round-robin",
                           'fail_on_5xx = true\nmax_fails = 2\ndown_time = "30s"')
    counts = tally(proxy.url + "/", 20)
    bad.stop()
    assert counts["bad"] == 2 and counts["a"] == 18, counts


def test_retry_on_status_tries_another_server(origins, make_proxy):
    bad = ScriptedBackend(_server_error)
    proxy = balanced_proxy(make_proxy, [bad.address, origins["a"].address], "round-robin",
                           "retry_on_status = [500]\nmax_fails = 0")
    counts = tally(proxy.url + "/", 10)
    bad.stop()
    assert counts == {"a": 10}


def _answer_with(status: int, origin: str) -> Handler:
    """A handler that reads whole requests and answers each with `status` and a body."""
    def answer(conn: socket.socket, backend: ScriptedBackend) -> None:
        body = b"from " + origin.encode()
        while read_request(conn, backend) is not None:
            conn.sendall(b"HTTP/1.1 %d Nope\r\nX-Origin: %s\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, origin.encode(), len(body), body))
    return answer


@pytest.mark.parametrize("count", [1, 2])
def test_retry_on_status_passes_the_last_answer_on(make_proxy, count):
    # With no other server left to try, the backend's own answer beats a made-up 502.
    bad = [ScriptedBackend(_answer_with(503, f"bad{i}")) for i in range(count)]
    proxy = balanced_proxy(make_proxy, [b.address for b in bad], "round-robin",
                           "retry_on_status = [503]\nmax_fails = 0")
    with httpx.Client() as client:
        responses = [client.get(proxy.url + "/") for _ in range(4)]
    for backend in bad:
        backend.stop()
    assert [r.status_code for r in responses] == [503] * 4
    assert all(r.content == b"from " + served_by(r).encode() for r in responses)
    assert sum(len(b.requests) for b in bad) == 4 * count  # each server tried once per request




def _answer_503_and_close(conn: socket.socket, backend: ScriptedBackend) -> None:
    if read_request(conn, backend) is not None:
        conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _close_after_reading(conn: socket.socket, backend: ScriptedBackend) -> None:
    read_request(conn, backend)  # the whole request, then a close without an answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("fault", [_answer_503_and_close, _close_after_reading], ids=["status", "close"])
def test_buffered_put_is_replayed_with_its_whole_body(origins, make_proxy, fault, chunked):
    first = ScriptedBackend(on_new_connections(fault))
    proxy = balanced_proxy(make_proxy, [first.address, origins["a"].address], "round-robin",
                           "retry_on_status = [503]\nmax_fails = 0", dropping=first)
    status, head, echoed = put(proxy.port, "/echo", REPLAY_BODY, chunked)
    first.stop()
    assert [r.split(b" ", 1)[0] for r in first.requests] == [b"PUT"]  # the first try happened
    assert status == 200 and b"X-Origin: a" in head
    assert echoed == REPLAY_BODY  # the replay carried the whole body again


def _ok_after_reading(conn: socket.socket, backend: ScriptedBackend) -> None:
    while read_request(conn, backend) is not None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Origin: good\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_streamed_put_is_never_sent_twice(make_proxy, chunked):
    # Idempotent or not, a request whose body went out as it arrived cannot be replayed.
    broken, good = ScriptedBackend(_close_after_reading), ScriptedBackend(_ok_after_reading)
    proxy = balanced_proxy(make_proxy, [broken.address, good.address], "round-robin",
                           "max_fails = 0")
    status, _, _ = put(proxy.port, "/", REPLAY_BODY, chunked, pause=0.3)
    broken.stop()
    good.stop()
    assert status == 502
    assert len(broken.requests) == 1 and not good.requests


def test_active_health_probe_down_and_up(make_proxy):
    a, b = Origin("a"), Origin("b")
    try:
        proxy = balanced_proxy(
            make_proxy, [a.address, b.address], "round-robin",
            '[backend.pool.health]\npath = "/health"\ninterval = "100ms"\nrise = 2\nfall = 2\n',
        )
        assert set(tally(proxy.url + "/", 10)) == {"a", "b"}
        # Each verdict takes fall (or rise) probes 100 ms apart; 5 s is a generous bound.
        httpx.get(f"http://{b.address}/health/down")
        wait_for(lambda: tally(proxy.url + "/", 10) == {"a": 10}, 5, "b taken out")
        httpx.get(f"http://{a.address}/health/down")
        every_down = wait_for(lambda: (r := httpx.get(proxy.url + "/")).status_code == 503 and r, 5,
                              "every server down")
        assert every_down.headers["retry-after"] == "1"
        httpx.get(f"http://{a.address}/health/up")
        httpx.get(f"http://{b.address}/health/up")
        wait_for(lambda: set(tally(proxy.url + "/", 10)) == {"a", "b"}, 5, "both back")
    finally:
        a.stop()
        b.stop()


def _user_owned_by(port: int, ports: list[int]) -> str:
    """An X-User value the hash ring of the servers on these loopback ports gives to `port`."""
    servers = [_FakeServer(p, "127.0.0.1") for p in ports]
    ring = ConsistentHash(servers, key=lambda exchange: exchange.key)
    owner = servers[ports.index(port)]
    return next(user for user in (f"user-{i}" for i in range(1000))
                if ring.pick(servers, _FakeExchange(user.encode())) is owner)


def test_active_probe_down_moves_the_requests_queued_for_the_server(origins, make_proxy):
    healthy, release = threading.Event(), threading.Event()
    healthy.set()

    def held(conn: socket.socket, backend: ScriptedBackend) -> None:
        request = read_request(conn, backend)
        if request is None:
            return
        if request.startswith(b"GET /health "):
            status = b"200 OK" if healthy.is_set() else b"503 Down"
        else:
            release.wait(15)  # keeps the server's only connection busy
            status = b"200 OK\r\nX-Origin: held"
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    server = ScriptedBackend(held)
    other = origins["b"]
    proxy = balanced_proxy(
        make_proxy, [server.address, other.address], "hash",
        'hash_key = "header:X-User"\nconnections = 1\nmax_fails = 0\n'
        '[backend.pool.health]\npath = "/health"\ninterval = "100ms"\nfall = 1\n',
    )
    user = {"X-User": _user_owned_by(server.port, [server.port, other.port])}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            busy = pool.submit(httpx.get, proxy.url + "/", headers=user, timeout=20)
            wait_for(lambda: any(r.startswith(b"GET / ") for r in server.requests), 5,
                     "the first request to hold the server's one connection")
            queued = pool.submit(httpx.get, proxy.url + "/", headers=user, timeout=20)
            time.sleep(0.3)  # the second waits in the server's own queue (hash is sticky)
            healthy.clear()
            # The probe's verdict moves it on at once, long before the pending timeout (10s).
            moved = queued.result(timeout=3)
        finally:
            release.set()
        assert moved.status_code == 200 and served_by(moved) == "b"
        assert served_by(busy.result(timeout=10)) == "held"
    server.stop()


def test_server_lost_in_the_middle_of_traffic(make_proxy):
    a, b, c = Origin("a"), Origin("b"), Origin("c")
    try:
        proxy = balanced_proxy(make_proxy, [a.address, b.address, c.address], "round-robin",
                               'retry_delay = "100ms"')
        results: list[tuple[float, str]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    try:
                        results.append((time.monotonic(), served_by(client.get(proxy.url + "/delay/0.01"))))
                    except httpx.HTTPError:
                        results.append((time.monotonic(), "error"))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.7)
        b.proc.kill()
        killed_at = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join()
        failures = [(round(t - killed_at, 3), r) for t, r in results if r not in ("a", "b", "c")]
        assert len(failures) <= 4, failures  # at most the requests in flight on b
        after = collections.Counter(origin for t, origin in results if t > killed_at + 0.5)
        assert after and set(after) <= {"a", "c"}, after
    finally:
        for origin in (a, b, c):
            origin.stop()


def test_workers_agree_on_health_within_the_probe_window(make_proxy):
    a, b = Origin("a"), Origin("b")
    try:
        proxy = make_proxy(
            backends={"pool": [a.address, b.address]}, workers=2,
            backend_options='[backend.pool.health]\npath = "/health"\ninterval = "100ms"\nfall = 2\n',
        )
        httpx.get(f"http://{b.address}/health/down")
        time.sleep(0.2 + 0.1 * 2 + 0.3)  # first probe jitter + fall * interval + margin
        # A new connection per request spreads them over both workers' accept queues.
        seen = collections.Counter(served_by(httpx.get(proxy.url + "/")) for _ in range(40))
        assert seen == {"a": 40}, seen
    finally:
        a.stop()
        b.stop()
