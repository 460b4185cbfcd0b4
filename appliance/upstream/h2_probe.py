"""An active health probe over HTTP/2 (a backend with protocol = "h2"): one GET on a stream."""

from __future__ import annotations

import asyncio

from appliance.h2.session import H2Error, H2Session


class _Answer:
    """The binding's owner for one probe: keeps the response status, ignores the body."""

    __slots__ = ("session", "status")

    def __init__(self) -> None:
        self.status = 0
        self.session: H2Session | None = None

    def h2_response(self, stream_id: int, status: int, headers: list, end_stream: bool) -> None:
        self.status = status

    def h2_data(self, stream_id: int, data: bytes) -> None:
        self.session.consume(stream_id, len(data))

    def h2_end_stream(self, stream_id: int) -> None:
        pass

    def h2_stream_closed(self, stream_id: int, error_code: int) -> None:
        if not self.status:
            self.status = -1  # reset before answering


async def h2_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: bytes,
                    authority: bytes, path: bytes) -> int:
    """The status the server answers GET `path` with; 0 if it closes or breaks the protocol first."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
        return 0
    answer = _Answer()
    session = answer.session = H2Session(answer, False)
    try:
        session.submit_request(b"GET", scheme, authority, path, [(b"user-agent", b"rproxyd-health")], True)
        while not answer.status:
            pieces = session.data_to_send()
            if pieces:
                writer.writelines(pieces)
            data = await reader.read(65536)
            if not data:
                return 0
            session.receive(data)
    except H2Error:
        return 0
    return max(answer.status, 0)
