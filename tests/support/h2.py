"""A raw HTTP/2 client for the tests, built on the pure `h2` package (test-only; the data
path never uses it): requests with any fields (connection-specific ones too), trailers,
and the frames as the server sent them, GOAWAY included."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class StreamReply:
    """What came back on one stream."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None  # the RST_STREAM error code, if the stream was reset

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    """One HTTP/2 connection, over TLS (ALPN h2) or plaintext (prior knowledge)."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, sni: str | None = None,
                 validate: bool = True) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = tls.wrap_socket(raw, server_hostname=sni) if tls is not None else raw
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate, validate_inbound_headers=False))
        self.conn.initiate_connection()
        self.replies: dict[int, StreamReply] = {}
        self.goaways: list[h2.events.ConnectionTerminated] = []
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str = "/", method: str = "GET", authority: str = "x",
                headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
                trailers: list[tuple[str, str]] | None = None, end: bool = True) -> int:
        """Open a stream; with `end` False the body stays open (send more with `data`)."""
        stream_id = self.conn.get_next_available_stream_id()
        scheme = "https" if isinstance(self.sock, ssl.SSLSocket) else "http"
        fields = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path),
                  *(headers or [])]
        if method == "CONNECT":  # RFC 9113 8.5: no :scheme, no :path
            fields = [(":method", method), (":authority", authority), *(headers or [])]
        last = end and body is None and trailers is None
        self.conn.send_headers(stream_id, fields, end_stream=last)
        self.replies[stream_id] = StreamReply()
        if body is not None:
            self.data(stream_id, body, end=end and trailers is None)
        if trailers is not None:
            self.conn.send_headers(stream_id, trailers, end_stream=True)
        self.flush()
        return stream_id

    def data(self, stream_id: int, body: bytes, end: bool = False) -> None:
        """Send body bytes as the flow-control windows allow (reading the server meanwhile)."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.flush()
                self.read_some()
                continue
            self.conn.send_data(stream_id, bytes(view[:window]))
            view = view[window:]
            self.flush()
        if end:
            self.conn.end_stream(stream_id)
        self.flush()

    def read_some(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            reply = self.replies.get(getattr(event, "stream_id", 0))
            if isinstance(event, h2.events.ResponseReceived):
                reply.headers = event.headers
            elif isinstance(event, h2.events.DataReceived):
                reply.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                reply.trailers = event.headers
            elif isinstance(event, h2.events.StreamEnded):
                reply.ended = True
            elif isinstance(event, h2.events.StreamReset) and reply is not None:
                reply.reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaways.append(event)
        self.flush()

    def wait(self, stream_id: int) -> StreamReply:
        """Read until the stream ended or was reset (or the connection closed)."""
        reply = self.replies[stream_id]
        while not (reply.ended or reply.reset is not None or self.closed):
            self.read_some()
        return reply

    def close(self) -> None:
        self.sock.close()
