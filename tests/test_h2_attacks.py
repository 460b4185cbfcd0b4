"""The known HTTP/2 attacks against a running rproxyd (h2c, one worker): raw frames built with
hyperframe and hpack (test-only). Each attack checks that the worker stays bounded (its RSS
from /proc, the same pid: no crash, no respawn), that the attacking connection is cut with
GOAWAY (or the one stream refused, where that is the answer), and that another client is
served meanwhile, while the attacking connection is still open.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.support_proc import GREETING, Rproxyd, config_text, demo_origin, get

pytestmark = pytest.mark.timeout(120)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RSS_LIMIT_KIB = 150 * 1024  # a worker serving these tests idles near 40 MiB


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rproxyd]:
    d = tmp_path_factory.mktemp("h2attacks")
    with demo_origin() as origin:
        rp = Rproxyd(d, config_text(origin, d / "run", process="workers = 1")
                     + '\n[limits]\nsend_timeout = "1s"\n')
        try:
            yield rp
        finally:
            rp.stop()


class Raw:
    """A plaintext HTTP/2 connection driven frame by frame."""

    def __init__(self, port: int, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        frame = SettingsFrame(0, settings=settings or {})
        self.sock.sendall(PREFACE + frame.serialize())

    def head(self, stream_id: int, path: str = "/", end_stream: bool = True, end_headers: bool = True,
             method: str = "GET", extra: list[tuple[str, str]] | None = None) -> HeadersFrame:
        block = self.encoder.encode([(":method", method), (":scheme", "http"), (":authority", "x"),
                                     (":path", path), *(extra or [])])
        flags = {"END_STREAM"} if end_stream else set()
        if end_headers:
            flags.add("END_HEADERS")
        return HeadersFrame(stream_id, data=block, flags=flags)

    def send(self, *frames: Frame) -> bool:
        """False once the server has closed (a flood may be cut while it is being sent)."""
        try:
            self.sock.sendall(b"".join(frame.serialize() for frame in frames))
        except OSError:
            return False
        return True

    def read_frame(self) -> Frame | None:
        """The next frame, or None at the end of the connection."""
        while True:
            if len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) >= 9 + length:
                    frame.parse_body(memoryview(self.buffer[9:9 + length]))
                    self.buffer = self.buffer[9 + length:]
                    if isinstance(frame, HeadersFrame):
                        frame.fields = self.decoder.decode(bytes(frame.data))
                    return frame
            try:
                data = self.sock.recv(1 << 16)
            except (ConnectionResetError, TimeoutError):
                return None
            if not data:
                return None
            self.buffer += data

    def until(self, wanted: type) -> list[Frame]:
        """Frames up to and including the first `wanted` one (or all, to the end)."""
        seen = []
        while (frame := self.read_frame()) is not None:
            seen.append(frame)
            if isinstance(frame, wanted):
                break
        return seen

    def goaway_and_close(self) -> GoAwayFrame:
        """The connection ends: its GOAWAY (read to the end, so the close is seen too)."""
        frames = self.until(type(None))
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert goaways, [type(f).__name__ for f in frames]
        return goaways[-1]

    def close(self) -> None:
        self.sock.close()


def _worker(proxy: Rproxyd) -> int:
    (worker,) = proxy.current_workers()
    return worker["pid"]


def _rss_kib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1])


@contextlib.contextmanager
def attack(proxy: Rproxyd) -> Iterator[Raw]:
    """An attacking connection; afterwards the same worker, bounded, serving others."""
    pid = _worker(proxy)
    raw = Raw(proxy.address[1])
    try:
        yield raw
    finally:
        raw.close()
    assert _worker(proxy) == pid, "the worker died and was replaced"
    assert _rss_kib(pid) < RSS_LIMIT_KIB
    _served_meanwhile(proxy)


def _served_meanwhile(proxy: Rproxyd) -> None:
    status, _, body = get(proxy.address)
    assert (status, body) == (200, GREETING)


def test_rapid_reset_closes_the_connection(proxy):
    with attack(proxy) as raw:
        stream = 1
        while stream < 2 * 20000 and raw.send(*[frame for sid in range(stream, stream + 200, 2) for frame
                                               in (raw.head(sid), RstStreamFrame(sid, error_code=8))]):
            stream += 200
        _served_meanwhile(proxy)
        goaway = raw.goaway_and_close()
        assert goaway.error_code != 0
        assert stream < 2 * 20000, "20000 resets went through"


def test_continuation_flood_closes_the_connection(proxy):
    with attack(proxy) as raw:
        raw.send(raw.head(1, end_headers=False))
        junk = ContinuationFrame(1, data=hpack.Encoder().encode([("x-junk", "j" * 4000)]))
        sent = 0
        while sent < 10000 and raw.send(*[junk] * 50):
            sent += 50
        _served_meanwhile(proxy)
        raw.goaway_and_close()
        assert sent < 10000, "10000 CONTINUATION frames (40 MB of header block) went through"


def test_hpack_bomb_is_refused_by_the_decoded_size(proxy):
    with attack(proxy) as raw:
        big = ("x-bomb", "b" * 4000)  # fills the dynamic table: index 62
        raw.send(raw.head(1, extra=[big]))
        # Then one byte per reference to it: 16 KiB of block decode to 64 MB of headers.
        bomb = raw.head(3, end_headers=False)
        bomb.data += b"\xbe" * 16000
        raw.send(bomb, ContinuationFrame(3, data=b"\xbe" * 16000, flags={"END_HEADERS"}))
        _served_meanwhile(proxy)
        answers: dict[int, str] = {}
        while (frame := raw.read_frame()) is not None and 3 not in answers:
            if isinstance(frame, HeadersFrame):
                answers[frame.stream_id] = dict(frame.fields).get(":status", "")
            elif isinstance(frame, RstStreamFrame | GoAwayFrame):
                answers[frame.stream_id or 3] = type(frame).__name__
        assert answers.get(3) in ("431", "RstStreamFrame", "GoAwayFrame"), answers


@pytest.mark.parametrize("flood", ["settings", "ping", "empty_data", "window_update_0"])
def test_control_frame_floods_close_the_connection(proxy, flood):
    with attack(proxy) as raw:
        if flood == "settings":
            frame = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100})
        elif flood == "ping":
            frame = PingFrame(0, opaque_data=b"12345678")
        elif flood == "window_update_0":
            raw.send(raw.head(1, path="/delay/5"))
            frame = WindowUpdateFrame(0, window_increment=0)
        else:
            raw.send(raw.head(1, method="POST", path="/sink", end_stream=False))
            frame = DataFrame(1, data=b"")
        sent = 0
        # The flood is sent without reading a byte of what comes back (ACKs pile up).
        while sent < 100000 and raw.send(*[frame] * 500):
            sent += 500
        _served_meanwhile(proxy)
        raw.goaway_and_close()
        assert sent < 100000, f"100000 {flood} frames went through"


def test_zero_window_stall_is_reset_after_the_send_timeout(proxy):
    pid = _worker(proxy)
    _, port = proxy.address
    raw = Raw(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    try:
        raw.send(raw.head(1, path=f"/bytes/{64 * 1024 * 1024}"))
        frames = raw.until(RstStreamFrame)  # [limits] send_timeout = 1s: never a window opened
        assert isinstance(frames[-1], RstStreamFrame) and frames[-1].stream_id == 1, frames
        _served_meanwhile(proxy)
        raw.send(raw.head(3))  # the connection itself goes on
        reply = raw.until(DataFrame)
        assert any(isinstance(f, HeadersFrame) and f.stream_id == 3 for f in reply)
    finally:
        raw.close()
    assert _worker(proxy) == pid and _rss_kib(pid) < RSS_LIMIT_KIB


def test_stream_id_reuse_and_exhaustion_close_the_connection(proxy):
    with attack(proxy) as raw:
        raw.send(raw.head(1))
        assert raw.until(DataFrame)
        raw.send(raw.head(1))  # stream 1 again, after it closed
        goaway = raw.goaway_and_close()
        assert goaway.error_code != 0
    with attack(proxy) as raw:
        raw.send(raw.head(2**31 - 1))  # the last stream id a client may use...
        raw.send(raw.head(5))  # ...and a lower one after it
        assert raw.goaway_and_close().error_code != 0
