"""Zero-copy response bodies (splice): exact bytes, reuse after, faults on either side."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support import ScriptedBackend, curl, running, wait_for

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
    """The pid of the proxy's one worker (make_proxy returns once it serves)."""
    (pid,) = proxy.worker_pids()
    return pid


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


def _bytes_read(pid: int) -> int:
    """What a process has passed through read(2) so far (/proc/PID/io rchar; splice(2) does not count)."""
    with open(f"/proc/{pid}/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def test_after_a_spliced_response_the_next_head_read_takes_at_most_16_kib(make_proxy):
    """A connection whose last response was spliced reads the next head 16 KiB at a time
    (HAProxy's bufsize, nginx's proxy_buffer_size): a body that arrived together with the
    head is spliced, not first copied in by one of uvloop's 256 KiB reads."""
    worker = 0

    def handler(conn: socket.socket, backend: ScriptedBackend) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)  # one send() takes it all
        response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
        while backend.read_head(conn) is not None:
            # The worker is stopped while the head and as much of the body as its receive
            # window takes reach its socket (loopback delivers within send()): it wakes to
            # find them queued together, as behind a file server's sendfile().
            os.kill(worker, signal.SIGSTOP)
            try:
                conn.setblocking(False)
                sent = conn.send(response)
            finally:
                conn.setblocking(True)
                os.kill(worker, signal.SIGCONT)
            conn.sendall(response[sent:])

    with running(backend := ScriptedBackend(handler)):
        proxy = make_proxy(backends={"app": [backend.address]})
        worker = _worker(proxy)
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            reads = []
            for _ in range(3):
                before = _bytes_read(worker)
                response = client.get("/big")
                reads.append(_bytes_read(worker) - before)
                assert hashlib.sha256(response.content).digest() == hashlib.sha256(BODY).digest()
        assert backend.connections == 1
        # The first response's head came by a plain read; the next ones' by capped reads:
        # the request (read from the client) and at most 16 KiB of the response.
        assert max(reads[1:]) <= 16 * 1024 + 1024, reads


def test_large_and_small_responses_alternate_on_one_backend_connection(make_proxy):
    """Capped reads after a splice, plain reads again after a response without one: every
    body exact whatever the order (large, small, chunked)."""
    small = os.urandom(3000)
    chunked = os.urandom(100_000)

    def handler(conn: socket.socket, backend: ScriptedBackend) -> None:
        while (head := backend.read_head(conn)) is not None:
            if b"/big" in head:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
            elif b"/chunked" in head:
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n" % len(chunked) + chunked + b"\r\n0\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(small) + small)

    expected = {"/big": BODY, "/small": small, "/chunked": chunked}
    with running(backend := ScriptedBackend(handler)):
        proxy = make_proxy(backends={"app": [backend.address]})
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            for path in ["/big", "/small", "/big", "/big", "/chunked", "/small", "/big", "/chunked", "/big"]:
                response = client.get(path)
                assert response.status_code == 200
                assert response.content == expected[path], path
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
            wait_for(lambda: _fds(worker, "pipe") > pipes_before, 5, "the worker's descriptors")
            # The body waits in the kernel: the worker does not buffer the stalled response.
            assert proxy.rss_kib() - rss_before < 16 * 1024


def test_concurrent_splices_share_the_worker_and_a_stalled_reader_holds_up_no_other(make_proxy):
    """While one client does not read (its splice waits for the socket to take bytes), the
    others' spliced bodies go through whole on the same worker, and the stalled one
    completes exact once its client reads again."""
    body = os.urandom(64 * MIB)  # more than the socket buffers hold: the stalled splice must wait
    with running(backend := _serve_body(body)):
        proxy = make_proxy(backends={"app": [backend.address]})
        with socket.create_connection(("127.0.0.1", proxy.port)) as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            stalled.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            received = stalled.recv(4096)
            with httpx.Client(base_url=proxy.url, timeout=30) as a, httpx.Client(base_url=proxy.url,
                                                                                   timeout=30) as b:
                for _ in range(2):
                    assert a.get("/big").content == body
                    assert b.get("/big").content == body
            while b"\r\n\r\n" not in received:
                received += stalled.recv(4096)
            head, _, rest = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            parts, size = [rest], len(rest)
            while size < len(body):
                chunk = stalled.recv(1 << 20)
                assert chunk, "the stalled response was cut"
                parts.append(chunk)
                size += len(chunk)
            assert b"".join(parts) == body


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
        wait_for(lambda: _fds(worker, "socket") <= sockets_before + 1, 5, "the worker's descriptors")


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
    wait_for(lambda: _fds(worker, "socket") <= sockets_before, 5, "the worker's descriptors")
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


# ------------------------------------------------------------------ request bodies (uploads)
UPLOAD = os.urandom(5 * MIB + 54321)


def _count_body(conn: socket.socket, backend: ScriptedBackend, answer_early: bool = False) -> None:
    """A keep-alive backend that reads each Content-Length body and answers its SHA-256.

    answer_early: answer 413 after the head and close, without reading the body.
    """
    while (data := backend.read_head(conn)) is not None:
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), b"0"))
        if answer_early:
            conn.sendall(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        digest = hashlib.sha256(body)
        left = length - len(body)
        while left:
            piece = conn.recv(min(left, 1 << 20))
            if not piece:
                return
            digest.update(piece)
            left -= len(piece)
        answer = digest.hexdigest().encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))


def test_large_upload_arrives_exact_through_a_pipe_and_both_connections_are_reused(make_proxy):
    with running(backend := ScriptedBackend(_count_body)):
        proxy = make_proxy(backends={"app": [backend.address]})
        worker = _worker(proxy)
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            answers = [client.post("/up", content=UPLOAD).text for _ in range(3)]
            small = client.post("/up", content=b"tiny").text  # after the splice: the parser again
        assert answers == [hashlib.sha256(UPLOAD).hexdigest()] * 3
        assert small == hashlib.sha256(b"tiny").hexdigest()
        assert backend.connections == 1
        assert _fds(worker, "pipe") >= 2  # the splice's pipe, kept for the next body


def test_pipelined_request_after_a_spliced_upload_is_answered(make_proxy):
    with running(backend := ScriptedBackend(_count_body)):
        proxy = make_proxy(backends={"app": [backend.address]})
        body = UPLOAD[:2 * MIB]
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                         + b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
            sock.settimeout(10)
            received = b""
            while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(
                    hashlib.sha256(b"abc").hexdigest().encode()):
                piece = sock.recv(65536)
                assert piece, received
                received += piece
        assert hashlib.sha256(body).hexdigest().encode() in received


def test_upload_splice_off_and_tls_clients_copy_the_same_bytes(make_proxy):
    with running(backend := ScriptedBackend(_count_body)):
        proxy = make_proxy(backends={"app": [backend.address]}, extra="[proxy]\nsplice_min_bytes = 0\n")
        worker = _worker(proxy)
        pipes_before = _fds(worker, "pipe")
        response = httpx.post(f"{proxy.url}/up", content=UPLOAD, timeout=30)
        assert response.text == hashlib.sha256(UPLOAD).hexdigest()
        assert _fds(worker, "pipe") <= pipes_before  # no pipe was made for it


def test_client_leaving_mid_upload_splice_frees_everything(make_proxy):
    with running(backend := ScriptedBackend(_count_body)):
        proxy = make_proxy(backends={"app": [backend.address]})
        worker = _worker(proxy)
        assert httpx.post(f"{proxy.url}/up", content=UPLOAD, timeout=30).status_code == 200  # warm up
        sockets_before, pipes_before = _fds(worker, "socket"), _fds(worker, "pipe")
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
                sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (64 * MIB)
                             + UPLOAD[:3 * MIB])
                time.sleep(0.2)
        # Each cut body closed its backend connection (it can't be completed) and the client's.
        wait_for(lambda: _fds(worker, "socket") <= sockets_before, 5, "the worker's descriptors")
        assert _fds(worker, "pipe") <= pipes_before
        after = httpx.post(f"{proxy.url}/up", content=UPLOAD, timeout=30)
        assert after.text == hashlib.sha256(UPLOAD).hexdigest()
        assert "Traceback" not in proxy.log()


def test_backend_answering_before_the_spliced_body_ends_reaches_the_client(make_proxy):
    def early(conn: socket.socket, backend: ScriptedBackend) -> None:
        _count_body(conn, backend, answer_early=True)
        time.sleep(0.5)  # unread body in the socket: closing now would reset the answer

    with running(backend := ScriptedBackend(early)):
        proxy = make_proxy(backends={"app": [backend.address]})
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (32 * MIB)
                         + UPLOAD[:MIB])
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 413")
        assert httpx.get(f"{proxy.url}/ok", timeout=10).status_code == 413  # the worker carries on
        assert "Traceback" not in proxy.log()


def test_client_stalling_mid_upload_splice_gets_408_and_the_backend_connection_goes(make_proxy):
    with running(backend := ScriptedBackend(_count_body)):
        proxy = make_proxy(backends={"app": [backend.address]}, limits='body_timeout = "1s"\n')
        worker = _worker(proxy)
        assert httpx.post(f"{proxy.url}/up", content=UPLOAD, timeout=30).status_code == 200  # warm up
        sockets_before = _fds(worker, "socket")
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (8 * MIB)
                         + UPLOAD[:2 * MIB])
            sock.settimeout(10)
            assert sock.recv(65536).startswith(b"HTTP/1.1 408")  # the body timeout ran during the splice
        # That backend connection is closed.
        wait_for(lambda: _fds(worker, "socket") <= sockets_before - 1, 5, "the worker's descriptors")
        assert "request body timed out" in proxy.log()


def _post_queued(sock: socket.socket, worker: int, body: bytes) -> bytes:
    """POST `body` on `sock` while the worker is stopped, so its first read finds the head and
    as much body as the socket holds (as behind an uploader faster than the worker); the answer."""
    request = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    os.kill(worker, signal.SIGSTOP)
    try:
        sock.setblocking(False)
        try:
            sent = sock.send(request)
        except BlockingIOError:
            sent = 0
    finally:
        sock.setblocking(True)
        os.kill(worker, signal.SIGCONT)
    sock.sendall(request[sent:])
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < 64:
        chunk = sock.recv(4096)
        assert chunk, answer
        answer += chunk
    return answer.partition(b"\r\n\r\n")[2]


def test_after_a_spliced_upload_the_next_request_head_read_takes_at_most_16_kib(make_proxy):
    """As for responses: once a connection's request body was spliced, its next head is read
    16 KiB at a time, so an upload that arrives with its head is spliced after at most 16 KiB
    went through the worker, not a 256 KiB read of uvloop's; a request whose body ends within
    such a read puts the connection back on plain reads."""
    with running(backend := ScriptedBackend(_count_body)):
        proxy = make_proxy(backends={"app": [backend.address]})
        worker = _worker(proxy)
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
            reads = []
            for body in (UPLOAD, UPLOAD, UPLOAD, b"short", UPLOAD):
                before = _bytes_read(worker)
                assert _post_queued(sock, worker, body) == hashlib.sha256(body).hexdigest().encode()
                reads.append(_bytes_read(worker) - before)
        assert backend.connections == 1
    # Each read counts the client's bytes that went through read(2) and the backend's answer.
    assert reads[0] > 64 * 1024, reads  # uncapped: the first read took what the socket held
    assert max(reads[1:3]) <= 16 * 1024 + 1024, reads
    assert reads[4] > 64 * 1024, reads  # the short body ended within a capped read: plain again
