"""A small HTTP/1.1 origin for `make run` and the tests, built on the standard library.

Endpoints:
  /                 a greeting
  /echo             the request body back (Content-Length or chunked request bodies)
  /sink             reads the request body in 64 KiB pieces and answers its length
  /trailers         a chunked body followed by an X-Checksum trailer field
  /headers          the request line and headers as JSON
  /bytes/N          N bytes with Content-Length, streamed in 64 KiB writes
  /chunked/N        N bytes, chunked
  /delay/SECONDS    a greeting after a pause
  /status/CODE      an empty response with that status
  /health           200, or 503 after /health/down (until /health/up), for active probes
Every response carries X-Origin: NAME (--name), so tests can see which server answered.
With --max-requests N each connection closes after its Nth response, without announcing it
in a `Connection: close` header: the per-connection request limit of many app servers, and
the race it sets up for a client reusing the connection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_BLOCK = b"x" * 65536


class _State:
    name = "demo"
    healthy = True
    max_requests = 0  # responses per connection before closing it unannounced; 0: no limit


class DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rproxyd-demo-origin"

    def log_message(self, format: str, *args: object) -> None:
        pass  # the proxy's log is the one to read

    def handle(self) -> None:
        limit = _State.max_requests
        if not limit:
            super().handle()
            return
        self.close_connection = True
        for _ in range(limit):
            self.handle_one_request()
            if self.close_connection:
                return
        # The limit is reached: the connection closes after a response that never said so.

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_GET

    def _body_pieces(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                try:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                except ValueError:  # a body cut short (the client went away) or malformed
                    self.close_connection = True
                    return
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                while size:
                    piece = self.rfile.read(min(size, 65536))
                    if not piece:
                        return
                    size -= len(piece)
                    yield piece
                self.rfile.readline()
        left = int(self.headers.get("Content-Length", 0) or 0)
        while left:
            piece = self.rfile.read(min(left, 65536))
            if not piece:
                return
            left -= len(piece)
            yield piece

    def _read_body(self) -> bytes:
        return b"".join(self._body_pieces())

    def end_headers(self) -> None:
        self.send_header("X-Origin", _State.name)
        super().end_headers()

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if path == "/sink":
            self._send(200, b"%d\n" % sum(len(piece) for piece in self._body_pieces()))
            return
        body = self._read_body()
        if path == "/":
            self._send(200, b"Hello from the rproxyd demo origin\n")
        elif path == "/echo":
            self._send(200, body, self.headers.get("Content-Type", "application/octet-stream"))
        elif path == "/headers":
            info = {"method": self.command, "path": self.path, "version": self.request_version,
                    "headers": [[k, v] for k, v in self.headers.items()], "body_bytes": len(body)}
            self._send(200, json.dumps(info).encode(), "application/json")
        elif parts[0] == "bytes" and len(parts) == 2 and parts[1].isdigit():
            self._stream(int(parts[1]), chunked=False)
        elif parts[0] == "chunked" and len(parts) == 2 and parts[1].isdigit():
            self._stream(int(parts[1]), chunked=True)
        elif path == "/health":
            self._send(200 if _State.healthy else 503, b"ok\n" if _State.healthy else b"down\n")
        elif path in ("/health/up", "/health/down"):
            _State.healthy = path == "/health/up"
            self._send(200, path.encode())
        elif path == "/trailers":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n0\r\nX-Checksum: 5d41402a\r\n\r\n")
        elif parts[0] == "delay" and len(parts) == 2:
            time.sleep(float(parts[1]))
            self._send(200, b"slept\n")
        elif parts[0] == "status" and len(parts) == 2 and parts[1].isdigit():
            self.send_response(int(parts[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"not found\n")

    def _stream(self, size: int, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        left = size
        while left:
            block = _BLOCK[: min(left, len(_BLOCK))]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            left -= len(block)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A peer that went away mid-response (a proxy dropping the connection of a client
        # that left) is routine for an origin; anything else still gets its traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rproxyd demo origin")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--name", default="demo", help="value of the X-Origin response header")
    parser.add_argument("--max-requests", type=int, default=0,
                        help="close each connection after this many responses, unannounced (0: no limit)")
    args = parser.parse_args(argv)
    _State.name = args.name
    _State.max_requests = args.max_requests
    server = DemoServer((args.bind, args.port), DemoHandler)
    print(f"demo origin on http://{args.bind}:{server.server_address[1]}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
