"""The compiled libnghttp2 binding (appliance/h2/session.pyx), driven in memory by real peers.

The peer is the pure `h2` package (a test client only) or raw frames from hyperframe/hpack for
the attacks (issue 17, item 2). Each attack test checks that the session ends with GOAWAY or
refuses the stream, and that what it holds stays bounded (streams, queued output, Python memory
for N frames): counts, never timings. The full-stack versions (rproxyd serving h2 on a socket)
are the h2 listener's tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from appliance.h2.session import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    NGHTTP2_VERSION,
    NO_ERROR,
    PROTOCOL_ERROR,
    H2Error,
    H2Session,
)
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [(":method", "GET"), (":scheme", "https"), (":authority", "example.test"), (":path", "/")]


class Owner:
    """Records every event; as a server, answers each complete request with `answer`."""

    def __init__(self, answer: bytes | None = None, trailers: list | None = None,
                 consume: bool = True) -> None:
        self.session: H2Session | None = None
        self.events: list[tuple] = []
        self.bodies: dict[int, bytearray] = {}
        self.answer = answer
        self.trailers = trailers
        self.consume = consume

    def _answer(self, stream_id: int) -> None:
        if self.answer is None:
            return
        self.session.submit_response(stream_id, 200, [(b"content-type", b"text/plain")], False)
        self.session.send_data(stream_id, self.answer)
        self.session.end_stream(stream_id, self.trailers)

    def h2_request(self, stream_id, method, scheme, authority, path, headers, end_stream):
        self.events.append(("request", stream_id, method, scheme, authority, path, headers, end_stream))
        self.bodies[stream_id] = bytearray()
        if end_stream:
            self._answer(stream_id)

    def h2_response(self, stream_id, status, headers, end_stream):
        self.events.append(("response", stream_id, status, headers, end_stream))
        self.bodies[stream_id] = bytearray()

    def h2_informational(self, stream_id, status, headers):
        self.events.append(("informational", stream_id, status, headers))

    def h2_trailers(self, stream_id, headers):
        self.events.append(("trailers", stream_id, headers))

    def h2_data(self, stream_id, data):
        self.bodies[stream_id] += data
        if self.consume:
            self.session.consume(stream_id, len(data))

    def h2_end_stream(self, stream_id):
        self.events.append(("end", stream_id))
        if self.session.server:
            self._answer(stream_id)

    def h2_stream_closed(self, stream_id, error_code):
        self.events.append(("closed", stream_id, error_code))

    def h2_goaway(self, last_stream_id, error_code):
        self.events.append(("goaway", last_stream_id, error_code))

    def h2_writable(self, stream_id):
        self.events.append(("writable", stream_id))

    def h2_header_overflow(self, stream_id):
        self.events.append(("overflow", stream_id))
        self.session.submit_response(stream_id, 431, [], True)

    def kinds(self, kind: str) -> list[tuple]:
        return [event for event in self.events if event[0] == kind]


def server(owner: Owner | None = None, **settings) -> tuple[H2Session, Owner]:
    owner = owner or Owner()
    owner.session = H2Session(owner, True, **settings)
    return owner.session, owner


def output(session: H2Session) -> bytes:
    pieces = session.data_to_send()
    return b"".join(pieces) if pieces else b""


def parse(data: bytes) -> list[Frame]:
    """The frames in a byte string (the server's output)."""
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


def goaways(data: bytes) -> list[GoAwayFrame]:
    return [frame for frame in parse(data) if isinstance(frame, GoAwayFrame)]


def h2_client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    return client


def exchange(client: h2.connection.H2Connection, session: H2Session) -> list[h2.events.Event]:
    """Pump bytes both ways until neither side has anything to say; the client's events."""
    events = []
    while True:
        moved = False
        data = client.data_to_send()
        if data:
            session.receive(data)
            moved = True
        data = output(session)
        if data:
            events += client.receive_data(data)
            moved = True
        if not moved:
            return events


def raw_start(session: H2Session) -> hpack.Encoder:
    """A raw client: the preface and an empty SETTINGS; the server's greeting is discarded."""
    session.receive(PREFACE + SettingsFrame(0).serialize())
    output(session)
    return hpack.Encoder()


def headers_frame(encoder: hpack.Encoder, stream_id: int, headers=REQUEST, end_stream=True) -> bytes:
    flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
    return HeadersFrame(stream_id, data=encoder.encode(headers), flags=flags).serialize()


@pytest.mark.parametrize("pure", ["0", "1"])
def test_the_binding_runs_in_both_builds_and_version_names_it(pure: str) -> None:
    """The binding is a C binding, no choice between builds: RPROXYD_PURE=1 loads it too."""
    code = "import appliance.h2.session as s; print(s.__file__)"
    env = {**os.environ, "RPROXYD_PURE": pure}
    where = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           check=True, timeout=30).stdout
    assert ".cpython-" in where and where.strip().endswith(".so")
    version = subprocess.run([str(Path(sys.executable).parent / "rproxyd"), "--version"], env=env,
                             capture_output=True, text=True, check=True, timeout=30).stdout
    assert version.splitlines()[1] == f"HTTP/2: libnghttp2 {NGHTTP2_VERSION}"


def test_request_and_response_with_bodies_and_trailers():
    body = b"b" * 100_000
    session, owner = server(Owner(answer=body, trailers=[(b"x-checksum", b"42")]))
    client = h2_client()
    exchange(client, session)
    client.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", "example.test"),
                            (":path", "/upload?x=1"), ("cookie", "a=1"), ("cookie", "b=2"),
                            ("te", "trailers")])
    client.send_data(1, b"u" * 15_000)
    client.send_data(1, b"u" * 15_000)
    client.send_headers(1, [("x-sum", "7")], end_stream=True)
    events = []
    received = bytearray()
    while not any(isinstance(event, h2.events.TrailersReceived) for event in events):
        step = exchange(client, session)
        assert step, "stalled"
        for event in step:  # the client reopens its window as it reads
            if isinstance(event, h2.events.DataReceived):
                received += event.data
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        events += step

    request = owner.kinds("request")[0]
    assert request[1:6] == ("request", 1, b"POST", b"https", b"example.test", b"/upload?x=1")[1:6]
    # Cookie crumbs are not joined; te: trailers passes nghttp2's checks.
    assert request[6] == [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"te", b"trailers")]
    assert request[7] is False
    assert owner.bodies[1] == b"u" * 30_000
    assert owner.kinds("trailers") == [("trailers", 1, [(b"x-sum", b"7")])]
    assert ("end", 1) in owner.events
    response = next(event for event in events if isinstance(event, h2.events.ResponseReceived))
    assert (b":status", b"200") in response.headers
    assert received == body
    trailers = next(event for event in events if isinstance(event, h2.events.TrailersReceived))
    assert trailers.headers == [(b"x-checksum", b"42")]
    assert owner.kinds("closed") == [("closed", 1, NO_ERROR)]
    assert session.open_streams() == 0


def test_body_bytes_are_not_copied():
    """A body buffer that fits one DATA frame is handed out as the same object."""
    body = b"z" * 1000
    session, owner = server(Owner(answer=body))
    client = h2_client()
    exchange(client, session)
    client.send_headers(1, REQUEST, end_stream=True)
    session.receive(client.data_to_send())
    pieces = session.data_to_send()
    assert any(piece is body for piece in pieces)
    # ... and a larger one as memoryview slices of it, not copies.
    big = b"q" * 40_000
    owner.answer = big
    client.send_headers(3, [*REQUEST[:3], (":path", "/big")], end_stream=True)
    session.receive(client.data_to_send())
    slices = [piece for piece in session.data_to_send() if isinstance(piece, memoryview)]
    assert slices and all(piece.obj is big for piece in slices)


def test_without_consume_the_clients_window_stays_shut():
    session, owner = server(Owner(consume=False))
    client = h2_client()
    exchange(client, session)
    client.send_headers(1, [*REQUEST[:1], *REQUEST[1:]], end_stream=False)
    sent = 0
    while client.local_flow_control_window(1) > 0:
        chunk = min(16_384, client.local_flow_control_window(1))
        client.send_data(1, b"x" * chunk)
        sent += chunk
        exchange(client, session)
    exchange(client, session)
    assert sent == 65_535 and client.local_flow_control_window(1) == 0
    assert len(owner.bodies[1]) == 65_535
    # The owner hands the bytes on: the window reopens.
    session.consume(1, 65_535)
    exchange(client, session)
    assert client.local_flow_control_window(1) > 0


def test_stream_id_reuse_is_a_connection_error():
    session, owner = server()
    encoder = raw_start(session)
    session.receive(headers_frame(encoder, 5))
    with pytest.raises(H2Error):
        session.receive(headers_frame(encoder, 3))
    assert [frame.error_code for frame in goaways(output(session))] == [PROTOCOL_ERROR]
    assert [event[1] for event in owner.kinds("request")] == [5]


def test_connection_specific_header_is_refused_before_the_owner():
    session, owner = server()
    encoder = raw_start(session)
    session.receive(headers_frame(encoder, 1, [*REQUEST, ("connection", "keep-alive")]))
    frames = parse(output(session))
    assert [(frame.stream_id, frame.error_code) for frame in frames if isinstance(frame, RstStreamFrame)] \
        == [(1, PROTOCOL_ERROR)]
    assert owner.kinds("request") == []


def test_rapid_reset_ends_the_connection():
    """CVE-2023-44487: requests opened and reset at once count as glitches; past the limit the
    connection gets GOAWAY(ENHANCE_YOUR_CALM)."""
    session, _owner = server(glitch_limit=200)
    encoder = raw_start(session)
    tracemalloc.start()
    with pytest.raises(H2Error) as error:
        for stream_id in range(1, 2 * 5000, 2):
            session.receive(headers_frame(encoder, stream_id)
                            + RstStreamFrame(stream_id, error_code=CANCEL).serialize())
            assert session.open_streams() <= 1
            output(session)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert error.value.code == ENHANCE_YOUR_CALM
    assert session.resets_received() == 201
    assert [frame.error_code for frame in goaways(output(session))] == [ENHANCE_YOUR_CALM]
    assert peak < 1 << 20
    assert session.want_close()


def test_continuation_flood_ends_the_connection():
    """CVE-2024-27316 family: endless CONTINUATION frames; nghttp2 stops after a few."""
    session, owner = server()
    encoder = raw_start(session)
    block = encoder.encode(REQUEST)
    frames = HeadersFrame(1, data=block, flags=[]).serialize()
    frames += b"".join(ContinuationFrame(1, data=encoder.encode([("x-a", "b")])).serialize()
                       for _ in range(1000))
    tracemalloc.start()
    with pytest.raises(H2Error):
        session.receive(frames)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert goaways(output(session))
    assert owner.kinds("request") == []
    assert peak < 256 << 10


def test_header_list_cap_across_continuation_refuses_the_stream_with_431():
    session, owner = server(max_header_list_size=16_384)
    encoder = raw_start(session)
    fields = [(f"x-filler-{i}", "v" * 1000) for i in range(40)]
    block = encoder.encode([*REQUEST, *fields])
    pieces = [block[i:i + 8000] for i in range(0, len(block), 8000)]
    frames = HeadersFrame(1, data=pieces[0], flags=["END_STREAM"]).serialize()
    for number, piece in enumerate(pieces[1:], 2):
        frames += ContinuationFrame(1, data=piece,
                                    flags=["END_HEADERS"] if number == len(pieces) else []).serialize()
    session.receive(frames)
    assert owner.kinds("overflow") == [("overflow", 1)]
    assert owner.kinds("request") == []
    headers = [frame for frame in parse(output(session)) if isinstance(frame, HeadersFrame)]
    assert hpack.Decoder().decode(headers[0].data) == [(":status", "431")]
    assert session.glitches() == 1
    # The connection keeps serving.
    session.receive(headers_frame(encoder, 3))
    assert [event[1] for event in owner.kinds("request")] == [3]


def test_hpack_bomb_is_capped_on_the_decoded_size():
    """One 4 KiB header in the dynamic table, then referenced thousands of times (one byte each):
    megabytes decoded from a few KiB. The cap stops collecting at max_header_list_size."""
    session, owner = server()
    encoder = raw_start(session)
    big = ("x-bomb", "b" * 4000)
    first = encoder.encode([*REQUEST, big])
    repeat = encoder.encode([big])
    assert len(repeat) == 1  # an index into the dynamic table
    block = first + repeat * 8000  # about 32 MB decoded
    pieces = [block[i:i + 16_000] for i in range(0, len(block), 16_000)]
    frames = HeadersFrame(1, data=pieces[0], flags=["END_STREAM"]
                          + (["END_HEADERS"] if len(pieces) == 1 else [])).serialize()
    for number, piece in enumerate(pieces[1:], 2):
        frames += ContinuationFrame(1, data=piece,
                                    flags=["END_HEADERS"] if number == len(pieces) else []).serialize()
    tracemalloc.start()
    session.receive(frames)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert owner.kinds("overflow") == [("overflow", 1)]
    assert owner.kinds("request") == []
    assert peak < 512 << 10


def test_settings_flood_from_a_reading_peer_gets_enhance_your_calm():
    session, _owner = server()
    raw_start(session)
    sent = 0
    with pytest.raises(H2Error) as error:
        while sent < 10_000:
            session.receive(SettingsFrame(0).serialize() * 100)
            sent += 100
            output(session)  # the peer reads its ACKs: nghttp2's ACK queue limit never trips
    assert error.value.code == ENHANCE_YOUR_CALM
    assert sent <= 1200
    assert [frame.error_code for frame in goaways(output(session))] == [ENHANCE_YOUR_CALM]


def test_ping_flood_from_a_peer_that_does_not_read_is_bounded():
    session, _owner = server()
    raw_start(session)
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    with pytest.raises(H2Error):
        session.receive(ping * 20_000)
    # Not 20000 ACKs: nghttp2 stops queueing at its outbound-ACK limit (or the glitch limit).
    assert len(output(session)) < 1001 * 17 + 1024


def test_empty_data_flood_gets_enhance_your_calm():
    session, _owner = server()
    encoder = raw_start(session)
    session.receive(headers_frame(encoder, 1, [(":method", "POST"), *REQUEST[1:]], end_stream=False))
    with pytest.raises(H2Error) as error:
        session.receive(DataFrame(1, data=b"").serialize() * 5000)
    assert error.value.code == ENHANCE_YOUR_CALM
    assert session.glitches() == 1001
    assert [frame.error_code for frame in goaways(output(session))] == [ENHANCE_YOUR_CALM]


def test_priority_flood_gets_enhance_your_calm_and_completed_streams_pay_back():
    session, _owner = server(Owner(answer=b"ok"))
    encoder = raw_start(session)
    priority = PriorityFrame(1, depends_on=0, stream_weight=16).serialize()
    # A completed request earns some allowance back: after 80 frames (and the SETTINGS), a
    # request, then 20 more stay free.
    session.receive(priority * 80)
    session.receive(headers_frame(encoder, 1))
    output(session)
    session.receive(priority * 20)
    assert session.glitches() == 0
    with pytest.raises(H2Error) as error:
        session.receive(priority * 5000)
    assert error.value.code == ENHANCE_YOUR_CALM
    assert [frame.error_code for frame in goaways(output(session))] == [ENHANCE_YOUR_CALM]


def client_and_server(answer=None, trailers=None):
    """Both ends ours, in memory: a client-mode session against a server-mode one."""
    back = Owner(answer=answer, trailers=trailers)
    back.session = H2Session(back, True)
    front = Owner()
    front.session = H2Session(front, False)
    return front, back


def pump(a: H2Session, b: H2Session) -> None:
    while True:
        moved = False
        for sender, receiver in ((a, b), (b, a)):
            data = sender.data_to_send()
            if data:
                receiver.receive(b"".join(data))
                moved = True
        if not moved:
            return


def test_client_mode_request_response_trailers_and_goaway():
    front, back = client_and_server(answer=b"r" * 200_000, trailers=[(b"grpc-status", b"0")])
    client, origin = front.session, back.session
    pump(client, origin)
    assert client.can_open()
    stream_id = client.submit_request(b"POST", b"http", b"origin.test", b"/rpc",
                                      [(b"content-type", b"application/grpc")], False)
    assert stream_id == 1
    client.send_data(stream_id, b"q" * 70_000)
    client.end_stream(stream_id)
    pump(client, origin)
    assert back.bodies[1] == b"q" * 70_000
    assert front.kinds("response") == [("response", 1, 200, [(b"content-type", b"text/plain")], False)]
    assert front.bodies[1] == b"r" * 200_000
    assert front.kinds("trailers") == [("trailers", 1, [(b"grpc-status", b"0")])]
    assert ("closed", 1, NO_ERROR) in front.events
    # The origin says goodbye after stream 1; a stream opened later was not processed.
    origin.goaway()
    pump(client, origin)
    assert front.kinds("goaway") == [("goaway", 1, NO_ERROR)]
    assert not client.can_open()
    with pytest.raises(H2Error):
        client.submit_request(b"GET", b"http", b"origin.test", b"/", [], True)


def test_client_mode_informational_and_reset():
    front, back = client_and_server()
    client, origin = front.session, back.session
    stream_id = client.submit_request(b"GET", b"http", b"origin.test", b"/", [], True)
    pump(client, origin)
    origin.submit_informational(stream_id, 103, [(b"link", b"</a.css>; rel=preload")])
    origin.submit_response(stream_id, 204, [], True)
    pump(client, origin)
    assert front.kinds("informational") == [("informational", 1, 103, [(b"link", b"</a.css>; rel=preload")])]
    assert front.kinds("response") == [("response", 1, 204, [], True)]
    second = client.submit_request(b"GET", b"http", b"origin.test", b"/slow", [], True)
    pump(client, origin)
    client.reset(second, CANCEL)
    pump(client, origin)
    assert ("closed", second, CANCEL) in front.events
    assert ("closed", second, CANCEL) in back.events
    assert client.open_streams() == origin.open_streams() == 0


def test_send_data_reports_the_queue_and_h2_writable_resumes():
    front, back = client_and_server()
    client, origin = front.session, back.session
    stream_id = client.submit_request(b"POST", b"http", b"origin.test", b"/", [], False)
    queued = 0
    chunk = b"c" * 65_536
    while queued <= client.high_water:
        queued = client.send_data(stream_id, chunk)
    assert client.queued(stream_id) == queued
    # The origin reads and consumes: the queue drains below low_water and the owner hears it.
    for _ in range(20):
        pump(client, origin)
        if front.kinds("writable"):
            break
    assert front.kinds("writable") == [("writable", stream_id)]
    assert client.queued(stream_id) <= client.low_water


def test_a_connection_error_nghttp2_finds_raises_after_queueing_goaway():
    session, _owner = server()
    raw_start(session)
    with pytest.raises(H2Error) as error:
        session.receive(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    assert error.value.code == PROTOCOL_ERROR
    assert [frame.error_code for frame in goaways(output(session))] == [PROTOCOL_ERROR]
    assert session.want_close()
