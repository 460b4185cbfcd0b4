"""Zero-copy response bodies (splice): exact bytes, reuse after, faults on either side."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support import ScriptedBackend, curl, running

MIB = 1024 * 1024
BODY = os.urandom(3 * MIB + 12345)  # not a multiple of any pipe or buffer size


def _fds(pid: int, kind: str) -> int:
    """How many of a process's descriptors are of `kind` ("socket" or "pipe")."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(kind + ":")
    return count


def _worker(proxy) -> int:
    """The pid of the proxy's one worker, once it serves (the supervisor listens before it forks)."""
    assert _wait_for(lambda: "worker 0 serving" in proxy.log())
    (pid,) = proxy.worker_pids()
    return pid


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _serve_body(body: bytes, send: int | None = None):
    """A keep-alive backend answering every request with `body` (only `send` bytes, then close)."""

    def handler(conn: socket.socket, backend: ScriptedBackend) -> None:
        while backend.read_head(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            if send is not None:
                conn.sendall(body[:send])
                return
            conn.sendall(body)

    return ScriptedBackend(handler)


def test_large_body_arrives_exact_and_both_connections_are_reused(make_proxy):
    with running(backend := _serve_body(BODY)):
        proxy = make_proxy(backends={"app": [backend.address]})
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            digests = []
            for _ in range(3):
                response = client.get("/big")
                assert response.status_code == 200
                assert response.headers["content-length"] == str(len(BODY))
                digests.append(hashlib.sha256(response.content).digest())
        assert digests == [hashlib.sha256(BODY).digest()] * 3
        # One client connection carried the three responses, and so did one backend connection.
        assert backend.connections == 1


def test_spliced_body_goes_through_a_pipe_and_a_small_one_does_not(make_proxy):
    """While a large body waits for a slow reader it sits in a kernel pipe, not in the worker."""
    with running(backend := _serve_body(b"x" * (64 * MIB))):
        proxy = make_proxy(backends={"app": [backend.address]})
        worker = _worker(proxy)
        pipes_before = _fds(worker, "pipe")
        rss_before = proxy.rss_kib()
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:  # the head, and whatever came with it; then stop reading
                head += sock.recv(4096)
            assert _wait_for(lambda: _fds(worker, "pipe") > pipes_before)
            # The body waits in the kernel: the worker does not buffer the stalled response.
            assert proxy.rss_kib() - rss_before < 16 * 1024


def test_splice_off_relays_the_same_bytes(make_proxy):
    with running(backend := _serve_body(BODY)):
        proxy = make_proxy(backends={"app": [backend.address]}, extra="[proxy]\nsplice_min_bytes = 0\n")
        worker = _worker(proxy)
        pipes_before = _fds(worker, "pipe")
        response = httpx.get(f"{proxy.url}/big", timeout=30)
        assert hashlib.sha256(response.content).digest() == hashlib.sha256(BODY).digest()
        assert _fds(worker, "pipe") <= pipes_before  # no pipe was made for it


def test_backend_closing_mid_splice_cuts_the_response_and_the_worker_carries_on(make_proxy, origin):
    with running(backend := _serve_body(BODY, send=MIB)):
        proxy = make_proxy(backends={"app": [backend.address], "demo": [origin.address]},
                           routes=[("/cut", "app"), ("/", "demo")])
        worker = _worker(proxy)
        sockets_before = _fds(worker, "socket")
        result = curl("-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", f"{proxy.url}/cut")
        assert result.returncode == 18, result  # curl: transfer closed with outstanding data
        code, size = result.stdout.split()
        assert code == b"200" and MIB <= int(size) < len(BODY)
        response = httpx.get(f"{proxy.url}/bytes/{2 * MIB}", timeout=30)
        assert response.status_code == 200 and len(response.content) == 2 * MIB
        assert _wait_for(lambda: _fds(worker, "socket") <= sockets_before + 1)


def test_client_leaving_mid_splice_frees_both_sockets_and_the_pipe(make_proxy, origin):
    proxy = make_proxy(backends={"demo": [origin.address]})
    worker = _worker(proxy)
    # Warm up: one finished large body leaves one backend connection and one idle pipe.
    assert len(httpx.get(f"{proxy.url}/bytes/{4 * MIB}", timeout=30).content) == 4 * MIB
    sockets_before, pipes_before = _fds(worker, "socket"), _fds(worker, "pipe")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (256 * MIB))
            received = 0
            while received < 2 * MIB:
                received += len(sock.recv(65536))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # The aborted responses' backend connections are closed (their framing is lost), the
    # client sockets and the pipes that still held bytes are gone: nothing accumulates.
    assert _wait_for(lambda: _fds(worker, "socket") <= sockets_before)
    assert _fds(worker, "pipe") <= pipes_before
    assert len(httpx.get(f"{proxy.url}/bytes/{4 * MIB}", timeout=30).content) == 4 * MIB


@pytest.mark.parametrize("size", [64 * 1024, 64 * 1024 + 1, 5 * MIB])
def test_bodies_around_the_threshold_are_exact(make_proxy, origin, tmp_path: Path, size: int):
    proxy = make_proxy(backends={"demo": [origin.address]})
    out = tmp_path / "body"
    result = curl("-s", "-o", str(out), "-w", "%{http_code}", f"{proxy.url}/bytes/{size}")
    assert result.stdout == b"200"
    direct = subprocess.run(["curl", "-s", f"http://{origin.address}/bytes/{size}"],
                            capture_output=True, check=True).stdout
    assert out.read_bytes() == direct
