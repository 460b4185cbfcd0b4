"""Capped head reads for a connection whose bodies are spliced.

uvloop reads a plain protocol's socket 256 KiB at a time. For a body that goes through
splice(2) that is wasteful: the read that brings the head in also brings a quarter MiB
of body, which is copied into a bytes object and written on before the splice can
begin. HeadReads stands in as the transport's protocol (uvloop's buffered-protocol path)
and reads at most HEAD_READ_BYTES at a time (HAProxy reads a head into its 16 KiB
buffer, nginx into `proxy_buffer_size` and `client_header_buffer_size`), so after the
head at most that much body goes through user space.

Both sides use it: a backend connection whose responses are spliced, and a client
connection whose request bodies are (an uploading client). It is used only while a
connection's bodies are spliced (the connection switches to it when a splice ends, and
back when a message completes within a capped read, so without a splice): a connection
that never splices keeps uvloop's plain path, one Python call per read, and no test on it.
"""

from __future__ import annotations

from typing import Protocol

HEAD_READ_BYTES = 16 * 1024
# One buffer per worker: a read is copied out of it before the next can happen.
_HEAD_READ = memoryview(bytearray(HEAD_READ_BYTES))


class StreamProtocol(Protocol):
    """What HeadReads passes events to (a BackendConnection or a ClientConnection: plain
    protocols of uvloop's); `requests_served` counts the messages read to their end."""

    requests_served: int

    def data_received(self, data: bytes) -> None: ...
    def uncap_reads(self) -> None: ...
    def eof_received(self) -> bool: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class HeadReads:
    """A backend connection's transport protocol while its reads are capped: passes every event on."""

    __slots__ = ("connection",)

    def __init__(self, connection: StreamProtocol) -> None:
        self.connection = connection

    def get_buffer(self, sizehint: int) -> memoryview:
        return _HEAD_READ

    def buffer_updated(self, nbytes: int) -> None:
        connection = self.connection
        served = connection.requests_served
        # The buffer is the worker's: what the connection keeps must be a copy.
        connection.data_received(bytes(_HEAD_READ[:nbytes]))
        # A message completed in this read, so without a splice (a splice ends in its own
        # callback): the next is likely small too. Checked here, not on the connection's
        # path, so connections that never splice pay nothing for capped reads.
        if connection.requests_served != served:
            connection.uncap_reads()

    def eof_received(self) -> bool:
        return self.connection.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.connection_lost(exc)

    def pause_writing(self) -> None:
        self.connection.pause_writing()

    def resume_writing(self) -> None:
        self.connection.resume_writing()
