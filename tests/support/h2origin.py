"""A small HTTP/2 origin (prior knowledge, plaintext) written with the pure `h2` package, for
fault injection the real servers don't do on demand: each connection answers its first
request only, then sends GOAWAY naming that stream as the last processed, so every later
stream on it is unprocessed (the proxy must send it again on a new connection)."""

from __future__ import annotations

import socket
import threading

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import GoAwayFrame


class GoawayOrigin:
    """Answers "conn N: METHOD PATH BODY-LENGTH" on the first stream of connection N, with
    " trailers NAME=VALUE" if the request had trailers; on /trailers, the answer has no length
    and ends with a trailer of its own (x-origin-trailer: 1)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.answered: list[str] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        h2conn = h2.connection.H2Connection(config)
        h2conn.initiate_connection()
        sock.sendall(h2conn.data_to_send())
        first = None
        head: dict[bytes, bytes] = {}
        body = 0
        trailers = ""
        with sock:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                out = b""
                for event in h2conn.receive_data(data):
                    ended = False
                    if isinstance(event, h2.events.RequestReceived):
                        if first is None:
                            first, head = event.stream_id, dict(event.headers)
                        else:
                            # Graceful GOAWAY naming the first stream; written by hand, as the
                            # h2 package closes its side for good once it sends one.
                            out += GoAwayFrame(0, last_stream_id=first).serialize()
                    elif isinstance(event, h2.events.DataReceived):
                        h2conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if event.stream_id == first:
                            body += len(event.data)
                    elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == first:
                        fields = (f"{name.decode()}={value.decode()}" for name, value in event.headers)
                        trailers = " trailers " + ",".join(fields)
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = event.stream_id == first
                    if ended:
                        path = head[b":path"].decode()
                        text = f"conn {number}: {head[b':method'].decode()} {path} {body}{trailers}"
                        self.answered.append(text)
                        payload = (text + "\n").encode()
                        if path == "/trailers":
                            h2conn.send_headers(first, [(b":status", b"200")])
                            h2conn.send_data(first, payload)
                            h2conn.send_headers(first, [(b"x-origin-trailer", b"1")], end_stream=True)
                        else:
                            h2conn.send_headers(first, [(b":status", b"200"),
                                                        (b"content-length", b"%d" % len(payload))])
                            h2conn.send_data(first, payload, end_stream=True)
                sock.sendall(h2conn.data_to_send() + out)
