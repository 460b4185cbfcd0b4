"""Hostile input, mutated at random from valid traffic: no worker may crash, hang or lose its place.

Three streams, each from a fixed seed so a failure replays exactly (its input is in the message):
- requests from clients, mutated from valid ones (framing, headers, pipelines, bodies);
- responses from a backend, mutated from valid ones;
- TLS records that are not a valid handshake.
After each stream the same workers still run and a normal request is still served; the
make_proxy fixture fails the test on any traceback in the log.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from tests.support import ScriptedBackend, free_port, read_all, read_until_close, status_codes
from tests.support.tls import client_context, https_get, make_certs

pytestmark = pytest.mark.timeout(300)

VALID_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /headers?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1\r\n"
    b"Connection: keep-alive\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /headers HTTP/1.1\r\nHost: a\r\n\r\n"
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PUT /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
]
VALID_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Origin: fuzz\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: http://a/\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d\r\n\r\nok",
]
# Bytes that matter to a parser: separators, line ends, NUL, DEL, non-ASCII, digits, signs.
SPECIAL = [b"\r", b"\n", b"\r\n", b"\0", b" ", b"\t", b":", b";", b",", b"\x7f", b"\xff", b"\x80",
           b"0", b"9", b"-", b"+", b"%", b"/", b"?", b"#", b"\"", b"\\"]
HEADERS = [b"Content-Length: 3\r\n", b"Content-Length: -1\r\n", b"Content-Length: 99999999999999999999\r\n",
           b"Content-Length: 1, 2\r\n", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
           b"Transfer-Encoding: chunked, identity\r\n", b"Host: b\r\n", b"Host:\r\n",
           b"Connection: close\r\n", b"Expect: 100-continue\r\n", b" folded continuation\r\n",
           b"X-Big: " + b"x" * 20000 + b"\r\n", b"Trailer: X\r\n", b"Content-Length : 3\r\n"]
STATUS_LINES = [b"HTTP/1.1 999 Odd\r\n", b"HTTP/1.1 20 OK\r\n", b"HTTP/2 200\r\n", b"HTTP/1.1 200\r\n",
                b"ICY 200 OK\r\n", b"HTTP/1.1 101 Switching Protocols\r\n"]


def mutate(rng: random.Random, data: bytes, extras: list[bytes]) -> bytes:
    """One to four random edits of `data`: flips, inserts, deletions, repeats, cuts, injected lines."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        op = rng.randrange(7)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = rng.choice(SPECIAL)
        elif op == 2:
            del out[at:at + rng.randint(1, 8)]
        elif op == 3:
            end = min(len(out), at + rng.randint(1, 32))
            out[at:at] = out[at:end] * rng.randint(2, 50)
        elif op == 4:
            del out[at:]
        elif op == 5:
            line_start = out.rfind(b"\r\n", 0, at) + 2 if b"\r\n" in out[:at] else 0
            out[line_start:line_start] = rng.choice(extras)
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(out)


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `data` and the end of the stream; what came back, and whether the proxy closed in time."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        with contextlib.suppress(OSError):  # the proxy may close before it read it all
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        return read_until_close(sock, timeout)


def test_mutated_requests(make_proxy, origin):
    proxy = make_proxy(backends={"demo": [origin.address]},
                       limits='header_timeout = "2s"\nbody_timeout = "2s"\n')
    workers = proxy.worker_pids()  # make_proxy returns once they serve
    rng = random.Random(20261202)
    seen: dict[int, int] = {}
    for case in range(1500):
        data = mutate(rng, rng.choice(VALID_REQUESTS), HEADERS)
        raw, closed = exchange(proxy.port, data)
        why = f"case {case}: {data[:300]!r} -> {raw[:300]!r}"
        assert closed, "no answer and no close: " + why
        assert not raw or raw.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), why
        codes = status_codes(raw)
        # 5xx would be the proxy failing (500) or sending the origin something it could not take.
        assert all(code < 500 or code in (501, 505) for code in codes), why
        for code in codes:
            seen[code] = seen.get(code, 0) + 1
    assert proxy.worker_pids() == workers
    assert seen.get(400, 0) > 100 and seen.get(200, 0) > 100, seen  # the mutations both pass and fail
    assert httpx.get(proxy.url + "/").status_code == 200


def test_mutated_responses(make_proxy):
    rng = random.Random(12022026)

    def fuzzed(conn: socket.socket, backend: ScriptedBackend) -> None:
        if backend.read_head(conn) is not None:
            conn.sendall(mutate(rng, rng.choice(VALID_RESPONSES), STATUS_LINES + HEADERS))
        conn.shutdown(socket.SHUT_WR)  # and the stream ends: a close-delimited body is complete
        read_all(conn, 1)

    backend = ScriptedBackend(fuzzed)
    proxy = make_proxy(backends={"b": [backend.address]},
                       backend_options='read_timeout = "2s"\nmax_fails = 0\n')
    workers = proxy.worker_pids()  # make_proxy returns once they serve
    seen: dict[int, int] = {}
    for case in range(600):
        raw, closed = exchange(proxy.port, b"GET /r%d HTTP/1.1\r\nHost: a\r\n\r\n" % case)
        why = f"case {case}: backend said {backend.requests[-1][:100]!r} -> client got {raw[:300]!r}"
        assert closed, "no answer and no close: " + why
        assert not raw or raw.startswith(b"HTTP/1.1 "), why
        codes = status_codes(raw)
        assert len([code for code in codes if code >= 200]) <= 1, "one request, one answer: " + why
        for code in codes[:1]:
            seen[code] = seen.get(code, 0) + 1
    backend.stop()
    assert proxy.worker_pids() == workers
    assert seen.get(502, 0) > 50 and seen.get(200, 0) > 50, seen


def _client_hello(server_name: str) -> bytes:
    """The first flight of a real TLS client (Python's ssl, as a memory BIO)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = ssl.create_default_context()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def test_garbage_on_a_tls_listener(make_proxy, origin, tmp_path: Path):
    certs = make_certs(tmp_path)
    tls_port = free_port()
    proxy = make_proxy(backends={"demo": [origin.address]}, extra=f"""
        [[listener]]
        name = "tls"
        bind = "127.0.0.1:{tls_port}"
        [listener.tls]
        enabled = true
        certificate = "{certs.path('a.test.pem')}"
        """)
    workers = proxy.worker_pids()  # make_proxy returns once they serve
    rng = random.Random(2026)
    hello = _client_hello("a.test")
    for case in range(300):
        data = rng.randbytes(rng.randint(1, 600)) if case % 3 == 0 else mutate(rng, hello, [hello[:5]])
        raw, closed = exchange(tls_port, data)
        assert closed, f"case {case}: no close after {data[:100]!r}"
        assert b"HTTP/" not in raw  # nothing but TLS alerts before a handshake
    assert proxy.worker_pids() == workers
    reply = https_get(tls_port, "a.test", client_context(certs))
    assert reply.status == 200
