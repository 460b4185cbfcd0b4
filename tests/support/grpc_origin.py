"""A gRPC origin (grpcio, as its own process) and a client, for the gRPC tests (issue 17, item 4).

The service is `test.Echo`, served by a generic handler with bytes in and out (no protoc step):

- `Unary`: answers the request's bytes, with initial metadata `x-origin: grpc` and the custom
  trailer `x-trailer: unary` beside grpc-status;
- `ServerStream`: the request is a count N in ASCII; answers N messages b"0", b"1", ...;
- `ClientStream`: answers every request message joined with b"|";
- `Bidi`: answers each message as it arrives, upper-cased;
- `Fail`: ends with FAILED_PRECONDITION and FAIL_MESSAGE (a '%' and non-ASCII, percent-encoded
  on the wire);
- `Sleep`: the request is seconds in ASCII; sleeps them unless the call is cancelled, then
  answers b"slept". The event log gets "started Sleep", and "cancelled Sleep" for a call
  cancelled (RST_STREAM) or past its deadline (grpcio enforces a grpc-timeout it receives), so a
  test can see the origin was told.

Run: `python -m tests.support.grpc_origin PORT EVENTS [CERT KEY]` (TLS with a certificate);
it prints "ready" once it serves. `GrpcOrigin` starts and stops it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

SERVICE = "test.Echo"
FAIL_MESSAGE = "no such widget: 100% gone, caf\u00e9"
# Method name -> its path on the wire.
METHODS = {name: f"/{SERVICE}/{name}" for name in ("Unary", "ServerStream", "ClientStream", "Bidi",
                                                    "Fail", "Sleep")}
ROOT = Path(__file__).resolve().parents[2]


class _Echo:
    def __init__(self, events: Path) -> None:
        self._events = events
        self._lock = threading.Lock()

    def event(self, line: str) -> None:
        with self._lock, self._events.open("a") as f:
            f.write(line + "\n")

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.send_initial_metadata((("x-origin", "grpc"),))
        context.set_trailing_metadata((("x-trailer", "unary"),))
        return request

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"|".join(requests)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for message in requests:
            yield message.upper()

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, FAIL_MESSAGE)
        raise AssertionError("abort returns by raising")

    def sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        done = threading.Event()
        context.add_callback(done.set)  # runs when the call ends, cancelled or not
        self.event("started Sleep")
        if done.wait(float(request)):
            self.event("cancelled Sleep")
            return b""
        return b"slept"


def serve(port: int, events: Path, cert: Path | None = None, key: Path | None = None) -> grpc.Server:
    echo = _Echo(events)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo.unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(echo.client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(echo.bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(echo.fail),
        "Sleep": grpc.unary_unary_rpc_method_handler(echo.sleep),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = f"127.0.0.1:{port}"
    if cert is not None and key is not None:
        credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound != port:
        raise SystemExit(f"gRPC origin: cannot listen on {address}")
    server.start()
    return server


class GrpcOrigin:
    """The origin above as its own process, plaintext or (with `cert` and `key`) TLS."""

    def __init__(self, port: int, events: Path, cert: Path | None = None, key: Path | None = None) -> None:
        self.port = port
        self.events = events
        events.touch()
        argv = [sys.executable, "-m", "tests.support.grpc_origin", str(port), str(events)]
        if cert is not None and key is not None:
            argv += [str(cert), str(key)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"gRPC origin did not start (exit {self.proc.wait(5)})")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, event: str) -> int:
        """How many times the origin logged `event` ("started Sleep", "cancelled Sleep")."""
        return self.events.read_text().splitlines().count(event)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class GrpcClient:
    """A grpcio channel to `target` ("host:port") calling test.Echo's methods with bytes.

    With `root_pem` the channel is TLS, trusting that CA; `server_name` is the name checked in the
    certificate and sent as SNI and :authority (grpc.ssl_target_name_override).
    """

    def __init__(self, target: str, root_pem: bytes | None = None, server_name: str | None = None) -> None:
        if root_pem is None:
            self.channel = grpc.insecure_channel(target)
        else:
            options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
            credentials = grpc.ssl_channel_credentials(root_pem)
            self.channel = grpc.secure_channel(target, credentials, options=options)

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def unary(self, request: bytes, timeout: float = 10.0, method: str = "Unary",
              metadata: tuple[tuple[str, str], ...] = ()) -> tuple[bytes, grpc.Call]:
        """The answer, and the call (its initial_metadata(), trailing_metadata(), code())."""
        call = self.channel.unary_unary(METHODS.get(method, method))
        return call.with_call(request, timeout=timeout, metadata=metadata)

    def server_stream(self, count: int, timeout: float = 10.0) -> list[bytes]:
        return list(self.channel.unary_stream(METHODS["ServerStream"])(str(count).encode(), timeout=timeout))

    def client_stream(self, messages: list[bytes], timeout: float = 10.0) -> bytes:
        return self.channel.stream_unary(METHODS["ClientStream"])(iter(messages), timeout=timeout)

    def bidi(self, messages: list[bytes], timeout: float = 10.0) -> list[bytes]:
        """Each message sent only after the answer to the previous one came back: the call is
        interleaved both ways, not a batch sent then read."""
        answers: list[bytes] = []
        sent = threading.Semaphore(0)

        def requests() -> Iterator[bytes]:
            for message in messages:
                yield message
                if not sent.acquire(timeout=timeout):
                    return

        for answer in self.channel.stream_stream(METHODS["Bidi"])(requests(), timeout=timeout):
            answers.append(answer)
            sent.release()
        return answers


def main(argv: list[str]) -> None:
    port, events = int(argv[0]), Path(argv[1])
    cert, key = (Path(argv[2]), Path(argv[3])) if len(argv) == 4 else (None, None)
    server = serve(port, events, cert, key)
    print("ready", flush=True)
    server.wait_for_termination()  # until SIGTERM (GrpcOrigin.stop) ends the process


if __name__ == "__main__":
    main(sys.argv[1:])
