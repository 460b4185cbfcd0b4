# cython: language_level=3
"""The compiled HTTP/2 session: libnghttp2 (Debian's libnghttp2-14) driven for one connection.

The contract other modules code against is /work/wt/H2API.md, summarised here:
- `H2Session(owner, server)` frames and unframes; it never touches a socket. The owner feeds
  it what it reads (`receive`) and writes what `data_to_send()` returns (`writelines`).
- nghttp2's callbacks run in C. Headers are collected in C per stream and handed to the owner
  once per head (`h2_request` / `h2_response` / `h2_informational` / `h2_trailers`), body bytes
  once per DATA chunk (`h2_data`), then `h2_end_stream`, `h2_stream_closed`.
- Outbound body bytes are not copied: each DATA frame is sent with NGHTTP2_DATA_FLAG_NO_COPY,
  and the send_data callback hands out the 9-byte frame header followed by the caller's buffer
  (or a memoryview slice of it).
- Receive windows are reopened by the owner only (`consume`): automatic WINDOW_UPDATE is off,
  so a stream whose backend does not read stops its client, instead of being buffered.
- Defences: nghttp2's own HTTP messaging checks, CONTINUATION / SETTINGS / outbound-ACK / reset
  rate limits, the decoded header-list cap, and a glitch counter (HAProxy's
  tune.h2.fe.glitches-threshold) that ends a misbehaving connection with ENHANCE_YOUR_CALM.
"""

from collections import deque

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.string cimport memcpy

from appliance.h2.libnghttp2 cimport *

NO_ERROR = NGHTTP2_NO_ERROR
PROTOCOL_ERROR = NGHTTP2_PROTOCOL_ERROR
INTERNAL_ERROR = NGHTTP2_INTERNAL_ERROR
FLOW_CONTROL_ERROR = NGHTTP2_FLOW_CONTROL_ERROR
SETTINGS_TIMEOUT = NGHTTP2_SETTINGS_TIMEOUT
STREAM_CLOSED = NGHTTP2_STREAM_CLOSED
FRAME_SIZE_ERROR = NGHTTP2_FRAME_SIZE_ERROR
REFUSED_STREAM = NGHTTP2_REFUSED_STREAM
CANCEL = NGHTTP2_CANCEL
COMPRESSION_ERROR = NGHTTP2_COMPRESSION_ERROR
CONNECT_ERROR = NGHTTP2_CONNECT_ERROR
ENHANCE_YOUR_CALM = NGHTTP2_ENHANCE_YOUR_CALM
INADEQUATE_SECURITY = NGHTTP2_INADEQUATE_SECURITY
HTTP_1_1_REQUIRED = NGHTTP2_HTTP_1_1_REQUIRED

# The libnghttp2 this module runs with (its soname is fixed at build time; the version is not).
NGHTTP2_VERSION = nghttp2_version(0).version_str.decode()

# Outbound queue marks per stream: send_data() returns the queued total, and the owner pauses
# its source above HIGH_WATER; h2_writable tells it to resume once the queue is below LOW_WATER.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

# The glitch allowance for control frames (SETTINGS, PING, PRIORITY, empty WINDOW_UPDATE): a
# connection may send CONTROL_ALLOWANCE of them before each further one counts as a glitch,
# and every stream that completes earns CONTROL_REFILL back, up to CONTROL_ALLOWANCE. A browser
# sends a handful per connection; a flood sends them without ever completing a stream.
cdef enum:
    CONTROL_ALLOWANCE = 100
    CONTROL_REFILL = 10
# nghttp2's limits, set explicitly (the values are its defaults or tighter): CONTINUATION frames
# after one HEADERS, SETTINGS entries per frame, SETTINGS/PING ACKs queued for a peer that does
# not read, and the token bucket for RST_STREAM from the peer (burst, per second).
cdef enum:
    MAX_CONTINUATIONS = 8
    MAX_SETTINGS = 32
    MAX_OUTBOUND_ACK = 1000
    RESET_BURST = 1000
    RESET_RATE = 33
# Server side: the last stream ids closed, which a late HEADERS (trailers in flight when we
# reset or finished the stream) may still name; nghttp2 ignores those.
cdef enum:
    RECENT_CLOSED = 64
# RFC 9113 section 6.5.2: each header field counts its name, its value and 32 octets.
cdef enum:
    FIELD_OVERHEAD = 32


class H2Error(Exception):
    """The session must end: `code` is the HTTP/2 error code (or nghttp2's negative error)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"HTTP/2 error {self.code}: {self.message}"


cdef object _lib_error(int rv):
    return H2Error(rv, nghttp2_strerror(rv).decode())


cdef class _Stream:
    """One stream's state in the binding: the head being collected, the outbound queue."""
    cdef int32_t id
    # The head being collected (reset at each HEADERS): fields, pseudo-headers, decoded size.
    cdef list headers
    cdef object method, scheme, authority, path
    cdef int status
    cdef Py_ssize_t header_size
    cdef bint overflow
    cdef bint head_done      # the final head (request, or response >= 200) was handed over
    cdef bint announced      # the owner has heard of this stream (it gets h2_stream_closed)
    cdef bint refused        # its head overflowed: its body is consumed and dropped
    # Outbound body: buffers not yet framed, the offset into the first, their total.
    cdef object out
    cdef Py_ssize_t offset
    cdef Py_ssize_t queued
    cdef bint provider       # a data provider is attached (the head was sent without END_STREAM)
    cdef bint deferred       # the read callback said DEFERRED: resume on more data or the end
    cdef bint eof
    cdef bint local_done     # our half is complete (END_STREAM or trailers submitted)
    cdef bint paused         # send_data() passed HIGH_WATER; h2_writable once below LOW_WATER
    cdef object trailers
    cdef Py_ssize_t unconsumed  # received DATA bytes the owner has not consumed yet

    def __cinit__(self, int32_t stream_id):
        self.id = stream_id
        self.headers = []
        self.out = deque()


cdef class H2Session:
    cdef nghttp2_session *_session
    cdef readonly bint server
    cdef dict _streams
    cdef list _out             # pieces for the transport's writelines
    cdef bytearray _pending    # control frames (and DATA frame headers) not yet in _out
    cdef list _writable        # stream ids to tell h2_writable after this send
    cdef object _error         # an exception raised inside a callback, re-raised after it
    cdef bint _receiving
    cdef long _goaway_sent         # the error code of the last GOAWAY we sent, or -1
    cdef Py_ssize_t _max_header_list_size
    cdef Py_ssize_t _glitch_limit
    cdef Py_ssize_t _glitches
    cdef Py_ssize_t _resets_received
    cdef Py_ssize_t _control_allowance
    cdef int32_t _max_request_id   # server side: the highest stream id a request opened
    cdef object _recent_closed     # server side: the last stream ids closed
    cdef readonly Py_ssize_t high_water
    cdef readonly Py_ssize_t low_water
    # The owner's event methods, bound once.
    cdef object _on_request, _on_response, _on_informational, _on_trailers, _on_data
    cdef object _on_end_stream, _on_stream_closed, _on_goaway, _on_writable, _on_header_overflow

    def __cinit__(self, owner, bint server, *, int max_concurrent_streams=128,
                  int initial_window_size=65535, int connection_window_size=1 << 20,
                  int max_frame_size=16384, int max_header_list_size=65536,
                  int header_table_size=4096, int glitch_limit=1000,
                  Py_ssize_t high_water=HIGH_WATER, Py_ssize_t low_water=LOW_WATER):
        cdef nghttp2_session_callbacks *callbacks = NULL
        cdef nghttp2_option *option = NULL
        cdef nghttp2_settings_entry iv[6]
        cdef size_t niv = 0
        cdef int rv
        self.server = server
        self._streams = {}
        self._out = []
        self._pending = bytearray()
        self._writable = []
        self._max_header_list_size = max_header_list_size
        self._glitch_limit = glitch_limit
        self._control_allowance = CONTROL_ALLOWANCE
        self._goaway_sent = -1
        self._recent_closed = deque(maxlen=RECENT_CLOSED)
        self.high_water = high_water
        self.low_water = low_water
        self._on_request = getattr(owner, "h2_request", None)
        self._on_response = getattr(owner, "h2_response", None)
        self._on_informational = getattr(owner, "h2_informational", None)
        self._on_trailers = getattr(owner, "h2_trailers", None)
        self._on_data = owner.h2_data
        self._on_end_stream = owner.h2_end_stream
        self._on_stream_closed = owner.h2_stream_closed
        self._on_goaway = getattr(owner, "h2_goaway", None)
        self._on_writable = getattr(owner, "h2_writable", None)
        self._on_header_overflow = getattr(owner, "h2_header_overflow", None)

        if nghttp2_session_callbacks_new(&callbacks) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_send_callback(callbacks, _send)
        nghttp2_session_callbacks_set_send_data_callback(callbacks, _send_data)
        nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, _on_begin_frame)
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, _on_header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, _on_data_chunk_recv)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, _on_stream_close)
        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, _on_frame_send)
        if nghttp2_option_new(&option) != 0:
            nghttp2_session_callbacks_del(callbacks)
            raise MemoryError()
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_max_continuations(option, MAX_CONTINUATIONS)
        nghttp2_option_set_max_settings(option, MAX_SETTINGS)
        nghttp2_option_set_max_outbound_ack(option, MAX_OUTBOUND_ACK)
        nghttp2_option_set_stream_reset_rate_limit(option, RESET_BURST, RESET_RATE)
        if server:
            rv = nghttp2_session_server_new2(&self._session, callbacks, <void *>self, option)
        else:
            rv = nghttp2_session_client_new2(&self._session, callbacks, <void *>self, option)
        nghttp2_option_del(option)
        nghttp2_session_callbacks_del(callbacks)
        if rv != 0:
            raise _lib_error(rv)

        if server:
            iv[niv].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
            iv[niv].value = max_concurrent_streams
            niv += 1
        else:
            iv[niv].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
            iv[niv].value = 0
            niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[niv].value = initial_window_size
        niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_MAX_FRAME_SIZE
        iv[niv].value = max_frame_size
        niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[niv].value = max_header_list_size
        niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_HEADER_TABLE_SIZE
        iv[niv].value = header_table_size
        niv += 1
        rv = nghttp2_submit_settings(self._session, NGHTTP2_FLAG_NONE, iv, niv)
        if rv != 0:
            raise _lib_error(rv)
        if connection_window_size != 65535:
            rv = nghttp2_session_set_local_window_size(self._session, NGHTTP2_FLAG_NONE, 0,
                                                       connection_window_size)
            if rv != 0:
                raise _lib_error(rv)

    def __dealloc__(self):
        if self._session is not NULL:
            nghttp2_session_del(self._session)

    # -- input ---------------------------------------------------------------------------------

    def receive(self, const uint8_t[::1] data not None) -> None:
        """Feed bytes read from the transport; events reach the owner before this returns."""
        cdef ssize_t rv
        if self._receiving:
            raise RuntimeError("H2Session.receive() called from inside one of its events")
        if data.shape[0] == 0:
            return
        self._receiving = True
        try:
            rv = nghttp2_session_mem_recv(self._session, &data[0], data.shape[0])
        finally:
            self._receiving = False
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if rv < 0:
            # nghttp2 queued a GOAWAY where the protocol allows one (FLOODED: none, the peer
            # does not read); either way the session is over.
            nghttp2_session_terminate_session(self._session, NGHTTP2_PROTOCOL_ERROR)
            raise _lib_error(<int>rv)
        # Frame what the events submitted, and any GOAWAY nghttp2 queued for a connection error
        # it found (bad frame, reset rate...): data_to_send() returns it; this says which.
        self._send()
        if self._goaway_sent > 0 and not nghttp2_session_want_read(self._session):
            raise H2Error(self._goaway_sent, "connection error; GOAWAY sent")

    # -- output --------------------------------------------------------------------------------

    def data_to_send(self):
        """Everything nghttp2 wants written now, for transport.writelines(); None if nothing."""
        cdef int rv
        cdef list out
        if self._receiving:
            raise RuntimeError("H2Session.data_to_send() called from inside one of its events")
        while True:
            self._send()
            if not self._writable:
                break
            # The owner may queue more in h2_writable; frame it in the same write.
            writable, self._writable = self._writable, []
            for stream_id in writable:
                if stream_id in self._streams and self._on_writable is not None:
                    self._on_writable(stream_id)
        self._flush_pending()
        if not self._out:
            return None
        out, self._out = self._out, []
        return out

    cdef int _send(self) except -1:
        """nghttp2 frames what it can into _out (the send callbacks below)."""
        cdef int rv = nghttp2_session_send(self._session)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if rv != 0:
            raise _lib_error(rv)
        return 0

    cdef inline void _flush_pending(self):
        if PyByteArray_GET_SIZE(self._pending):
            self._out.append(self._pending)
            self._pending = bytearray()

    cdef int _append_pending(self, const uint8_t *data, size_t length) except -1:
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self._pending)
        PyByteArray_Resize(self._pending, size + <Py_ssize_t>length)
        memcpy(PyByteArray_AS_STRING(self._pending) + size, data, length)
        return 0

    # -- submitting ----------------------------------------------------------------------------

    def submit_response(self, int32_t stream_id, int status, list headers, bint end_stream=False):
        """The response head; names lowercase; the binding adds :status."""
        cdef _Stream stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._submit_head(stream, b":status", b"%d" % status, None, None, None, headers,
                          end_stream, False)

    def submit_informational(self, int32_t stream_id, int status, list headers):
        """A 1xx head (100 Continue, 103 Early Hints)."""
        if stream_id not in self._streams:
            return
        self._submit_head(self._streams[stream_id], b":status", b"%d" % status, None, None, None,
                          headers, False, True)

    def submit_request(self, bytes method, bytes scheme, bytes authority, bytes path, list headers,
                       bint end_stream=False) -> int:
        """Client side: a new stream with this request head; returns its id."""
        if nghttp2_session_check_request_allowed(self._session) == 0:
            raise H2Error(NGHTTP2_REFUSED_STREAM, "no new stream: GOAWAY received or ids exhausted")
        stream = _Stream(0)
        return self._submit_head(stream, b":method", method, scheme, authority, path, headers,
                                 end_stream, False)

    cdef int32_t _submit_head(self, _Stream stream, bytes first_name, bytes first, bytes scheme,
                              bytes authority, bytes path, list headers, bint end_stream,
                              bint informational) except -1:
        cdef Py_ssize_t count = len(headers) + 1 + (scheme is not None) + (authority is not None) \
            + (path is not None)
        cdef nghttp2_nv *nva = <nghttp2_nv *>PyMem_Malloc(count * sizeof(nghttp2_nv))
        cdef nghttp2_data_provider provider
        cdef Py_ssize_t i = 0
        cdef int32_t rv
        if nva is NULL:
            raise MemoryError()
        try:
            _set_nv(&nva[i], first_name, first)
            i += 1
            if scheme is not None:
                _set_nv(&nva[i], b":scheme", scheme)
                i += 1
            if authority is not None:
                _set_nv(&nva[i], b":authority", authority)
                i += 1
            if path is not None:
                _set_nv(&nva[i], b":path", path)
                i += 1
            for name, value in headers:
                _set_nv(&nva[i], name, value)
                i += 1
            provider.source.ptr = NULL
            provider.read_callback = _read_body
            if informational:
                rv = nghttp2_submit_headers(self._session, NGHTTP2_FLAG_NONE, stream.id, NULL,
                                            nva, count, NULL)
            elif self.server:
                rv = nghttp2_submit_response(self._session, stream.id, nva, count,
                                             NULL if end_stream else &provider)
            else:
                rv = nghttp2_submit_request(self._session, NULL, nva, count,
                                            NULL if end_stream else &provider, NULL)
        finally:
            PyMem_Free(nva)
        if rv < 0:
            raise _lib_error(rv)
        if informational:
            return stream.id
        if not self.server:
            stream.id = rv
            stream.announced = True
            self._streams[rv] = stream
        stream.provider = not end_stream
        stream.local_done = end_stream
        return stream.id

    def send_data(self, int32_t stream_id, data) -> int:
        """Queue body bytes (not copied: the buffer must not change until sent); returns the
        stream's queued total (pause the source above high_water, resume on h2_writable)."""
        cdef _Stream stream = self._streams.get(stream_id)
        cdef Py_ssize_t size = len(data)
        if stream is None or not stream.provider or stream.eof:
            return 0
        if size:
            stream.out.append(data)
            stream.queued += size
            if stream.deferred:
                stream.deferred = False
                nghttp2_session_resume_data(self._session, stream_id)
        if stream.queued > self.high_water:
            stream.paused = True
        return stream.queued

    def end_stream(self, int32_t stream_id, list trailers=None):
        """Our half ends after the queued data, with trailers if given."""
        cdef _Stream stream = self._streams.get(stream_id)
        if stream is None or not stream.provider or stream.eof:
            return
        stream.eof = True
        stream.trailers = trailers or None
        if stream.deferred:
            stream.deferred = False
            nghttp2_session_resume_data(self._session, stream_id)

    def reset(self, int32_t stream_id, uint32_t error_code=NGHTTP2_CANCEL):
        """RST_STREAM."""
        nghttp2_submit_rst_stream(self._session, NGHTTP2_FLAG_NONE, stream_id, error_code)

    def consume(self, int32_t stream_id, Py_ssize_t size):
        """The owner handed on `size` received bytes of this stream: reopen the windows."""
        cdef _Stream stream = self._streams.get(stream_id)
        if stream is None or size <= 0:
            return
        if size > stream.unconsumed:
            size = stream.unconsumed
        stream.unconsumed -= size
        nghttp2_session_consume(self._session, stream_id, size)

    def shutdown_notice(self):
        """Server side: GOAWAY(2^31-1), the client stops opening streams; goaway() follows."""
        nghttp2_submit_shutdown_notice(self._session)

    def goaway(self, uint32_t error_code=NGHTTP2_NO_ERROR):
        """GOAWAY with the last processed stream id; with an error code the session ends once
        it is sent."""
        if error_code == NGHTTP2_NO_ERROR:
            nghttp2_submit_goaway(self._session, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(self._session),
                                  error_code, NULL, 0)
        else:
            nghttp2_session_terminate_session(self._session, error_code)

    # -- state ---------------------------------------------------------------------------------

    def can_open(self) -> bool:
        """Client side: a new stream may be opened now (no GOAWAY, ids left, peer's limit)."""
        return (nghttp2_session_check_request_allowed(self._session) != 0
                and <uint32_t>len(self._streams) < nghttp2_session_get_remote_settings(
                    self._session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))

    def max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (nghttp2 assumes 100 until it arrives)."""
        return nghttp2_session_get_remote_settings(self._session,
                                                   NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)

    def want_close(self) -> bool:
        return (not nghttp2_session_want_read(self._session)
                and not nghttp2_session_want_write(self._session))

    def open_streams(self) -> int:
        return len(self._streams)

    def last_stream_id(self) -> int:
        return nghttp2_session_get_last_proc_stream_id(self._session)

    def queued(self, int32_t stream_id) -> int:
        cdef _Stream stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.queued

    def glitches(self) -> int:
        return self._glitches

    def resets_received(self) -> int:
        return self._resets_received

    # -- what the callbacks share ----------------------------------------------------------------

    cdef int _glitch(self):
        """Count a glitch; past the limit, GOAWAY(ENHANCE_YOUR_CALM) and stop reading (the
        return value, for the callback to return)."""
        self._glitches += 1
        if self._glitch_limit and self._glitches > self._glitch_limit:
            if self._error is None:
                self._error = H2Error(NGHTTP2_ENHANCE_YOUR_CALM,
                                      f"{self._glitches} protocol glitches (limit {self._glitch_limit})")
                nghttp2_session_terminate_session(self._session, NGHTTP2_ENHANCE_YOUR_CALM)
            return NGHTTP2_ERR_CALLBACK_FAILURE
        return 0

    cdef int _control_frame(self):
        self._control_allowance -= 1
        if self._control_allowance < 0:
            self._control_allowance = 0
            return self._glitch()
        return 0

    cdef int _headers_begin(self, int32_t stream_id):
        """Server side: a HEADERS for a stream id below the highest one opened, on no open stream
        (and none of the last ones closed), reuses an id: RFC 9113 section 5.1.1 makes it a connection
        error, which nghttp2 (unable to remember every closed stream) leaves to us; it would
        otherwise ignore the frame."""
        if stream_id > self._max_request_id:
            self._max_request_id = stream_id
        elif stream_id not in self._streams and stream_id not in self._recent_closed:
            if self._error is None:
                self._error = H2Error(NGHTTP2_PROTOCOL_ERROR, f"stream id {stream_id} reused")
                nghttp2_session_terminate_session(self._session, NGHTTP2_PROTOCOL_ERROR)
            return NGHTTP2_ERR_CALLBACK_FAILURE
        return 0

    cdef int _failed(self, BaseException error):
        """An owner's event raised: keep it for receive()/data_to_send() to re-raise."""
        if self._error is None:
            self._error = error
        return NGHTTP2_ERR_CALLBACK_FAILURE

    cdef int _head_received(self, const nghttp2_frame *frame) except? -1:
        cdef _Stream stream = self._streams.get(frame.hd.stream_id)
        cdef bint end = frame.hd.flags & NGHTTP2_FLAG_END_STREAM
        cdef int32_t sid = frame.hd.stream_id
        if stream is None:
            return 0
        headers, stream.headers = stream.headers, None
        if stream.overflow:
            if not stream.head_done and self._on_header_overflow is not None:
                stream.refused = True
                stream.announced = True
                self._on_header_overflow(sid)
            else:  # oversized trailers, or no owner method: the stream ends here
                nghttp2_submit_rst_stream(self._session, NGHTTP2_FLAG_NONE, sid,
                                          NGHTTP2_PROTOCOL_ERROR)
            return self._glitch()
        if frame.headers.cat == NGHTTP2_HCAT_REQUEST:
            stream.head_done = True
            stream.announced = True
            self._on_request(sid, stream.method, stream.scheme, stream.authority, stream.path,
                             headers, end)
        elif not stream.head_done and stream.status:
            if stream.status < 200:
                if self._on_informational is not None:
                    self._on_informational(sid, stream.status, headers)
            else:
                stream.head_done = True
                self._on_response(sid, stream.status, headers, end)
        elif not stream.refused:
            if self._on_trailers is not None:
                self._on_trailers(sid, headers)
            self._on_end_stream(sid)
        return 0


cdef inline void _set_nv(nghttp2_nv *nv, bytes name, bytes value):
    nv.name = <uint8_t *><char *>name
    nv.namelen = len(name)
    nv.value = <uint8_t *><char *>value
    nv.valuelen = len(value)
    nv.flags = NGHTTP2_NV_FLAG_NONE


# -- nghttp2's callbacks (user_data is the H2Session) ----------------------------------------------

cdef ssize_t _send(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                   void *user_data) noexcept:
    cdef H2Session self = <H2Session>user_data
    try:
        self._append_pending(data, length)
    except BaseException as error:
        return self._failed(error)
    return <ssize_t>length


cdef int _send_data(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd,
                    size_t length, nghttp2_data_source *source, void *user_data) noexcept:
    # One DATA frame with NO_COPY: its header, then `length` bytes from the stream's queue, as
    # the caller's buffers or memoryview slices of them (no padding is ever asked for).
    cdef H2Session self = <H2Session>user_data
    cdef _Stream stream
    cdef Py_ssize_t remaining = <Py_ssize_t>length
    cdef Py_ssize_t available
    try:
        stream = self._streams[frame.hd.stream_id]
        self._append_pending(framehd, 9)
        self._flush_pending()
        while remaining:
            buffer = stream.out[0]
            available = len(buffer) - stream.offset
            if available <= remaining:
                self._out.append(buffer if stream.offset == 0 else memoryview(buffer)[stream.offset:])
                stream.out.popleft()
                stream.offset = 0
                remaining -= available
            else:
                self._out.append(memoryview(buffer)[stream.offset:stream.offset + remaining])
                stream.offset += remaining
                remaining = 0
        stream.queued -= <Py_ssize_t>length
        if stream.paused and stream.queued <= self.low_water:
            stream.paused = False
            self._writable.append(stream.id)
    except BaseException as error:
        return self._failed(error)
    return 0


cdef ssize_t _read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept:
    # How much of the queue the next DATA frame carries (framed later by _send_data, NO_COPY);
    # nothing queued and not ended: DEFERRED until send_data() or end_stream() resumes it.
    cdef H2Session self = <H2Session>user_data
    cdef _Stream stream
    cdef Py_ssize_t size
    cdef nghttp2_nv *nva
    cdef Py_ssize_t i
    cdef int rv
    try:
        stream = self._streams.get(stream_id)
        if stream is None:
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        size = stream.queued if stream.queued < <Py_ssize_t>length else <Py_ssize_t>length
        if size:
            data_flags[0] |= NGHTTP2_DATA_FLAG_NO_COPY
        if stream.eof and size == stream.queued:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            stream.local_done = True
            if stream.trailers is not None:
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
                trailers, stream.trailers = stream.trailers, None
                nva = <nghttp2_nv *>PyMem_Malloc(len(trailers) * sizeof(nghttp2_nv))
                if nva is NULL:
                    raise MemoryError()
                try:
                    for i in range(len(trailers)):
                        _set_nv(&nva[i], trailers[i][0], trailers[i][1])
                    rv = nghttp2_submit_trailer(session, stream_id, nva, len(trailers))
                finally:
                    PyMem_Free(nva)
                if rv != 0:
                    raise _lib_error(rv)
        elif size == 0:
            stream.deferred = True
            return NGHTTP2_ERR_DEFERRED
        return size
    except BaseException as error:
        return self._failed(error)


cdef int _on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd,
                         void *user_data) noexcept:
    # Control frames are counted as they begin, before nghttp2 acts on them (queues an ACK).
    cdef H2Session self = <H2Session>user_data
    if hd.type == NGHTTP2_HEADERS and self.server:
        return self._headers_begin(hd.stream_id)
    if hd.type == NGHTTP2_SETTINGS or hd.type == NGHTTP2_PING:
        if not hd.flags & NGHTTP2_FLAG_ACK:
            return self._control_frame()
    elif hd.type == NGHTTP2_PRIORITY:
        return self._control_frame()
    elif hd.type == NGHTTP2_DATA and hd.length == 0 and not hd.flags & NGHTTP2_FLAG_END_STREAM:
        return self._glitch()
    return 0


cdef int _on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
                           void *user_data) noexcept:
    cdef H2Session self = <H2Session>user_data
    cdef _Stream stream
    cdef int32_t sid = frame.hd.stream_id
    try:
        stream = self._streams.get(sid)
        if stream is None:
            if not self.server or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
                return 0  # a head for a stream we do not know (closed): ignored
            stream = _Stream(sid)
            self._streams[sid] = stream
        stream.headers = []
        stream.header_size = 0
        stream.overflow = False
        stream.status = 0
    except BaseException as error:
        return self._failed(error)
    return 0


cdef int _on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                    void *user_data) noexcept:
    # Collected in C: a pseudo-header into its field, any other into the stream's list. The
    # decoded size is counted across HEADERS and CONTINUATION; past the cap nothing more is kept
    # (nghttp2 still decodes the block, to keep HPACK in step) and the head is refused.
    cdef H2Session self = <H2Session>user_data
    cdef _Stream stream
    try:
        stream = self._streams.get(frame.hd.stream_id)
        if stream is None or stream.overflow or stream.headers is None:
            return 0
        stream.header_size += <Py_ssize_t>(namelen + valuelen) + FIELD_OVERHEAD
        if stream.header_size > self._max_header_list_size:
            stream.overflow = True
            stream.headers = []
            return 0
        if namelen and name[0] == b":":
            field = PyBytes_FromStringAndSize(<const char *>name, namelen)
            text = PyBytes_FromStringAndSize(<const char *>value, valuelen)
            if field == b":method":
                stream.method = text
            elif field == b":path":
                stream.path = text
            elif field == b":authority":
                stream.authority = text
            elif field == b":scheme":
                stream.scheme = text
            elif field == b":status":
                stream.status = int(text)
            return 0
        stream.headers.append((PyBytes_FromStringAndSize(<const char *>name, namelen),
                               PyBytes_FromStringAndSize(<const char *>value, valuelen)))
    except BaseException as error:
        return self._failed(error)
    return 0


cdef int _on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                        void *user_data) noexcept:
    cdef H2Session self = <H2Session>user_data
    cdef _Stream stream
    cdef uint8_t kind = frame.hd.type
    try:
        if kind == NGHTTP2_DATA:
            if frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
                stream = self._streams.get(frame.hd.stream_id)
                if stream is not None and not stream.refused:
                    self._on_end_stream(frame.hd.stream_id)
        elif kind == NGHTTP2_HEADERS:
            return self._head_received(frame)
        elif kind == NGHTTP2_RST_STREAM:
            self._resets_received += 1
            stream = self._streams.get(frame.hd.stream_id)
            if self.server and stream is not None and not stream.local_done:
                return self._glitch()  # Rapid Reset: the request was cancelled before its answer
        elif kind == NGHTTP2_GOAWAY:
            if self._on_goaway is not None:
                self._on_goaway(frame.goaway.last_stream_id, frame.goaway.error_code)
        elif kind == NGHTTP2_WINDOW_UPDATE and frame.window_update.window_size_increment == 0:
            return self._control_frame()
    except BaseException as error:
        return self._failed(error)
    return 0


cdef int _on_frame_send(nghttp2_session *session, const nghttp2_frame *frame,
                        void *user_data) noexcept:
    if frame.hd.type == NGHTTP2_GOAWAY:
        (<H2Session>user_data)._goaway_sent = frame.goaway.error_code
    return 0


cdef int _on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                             const uint8_t *data, size_t length, void *user_data) noexcept:
    cdef H2Session self = <H2Session>user_data
    cdef _Stream stream
    try:
        stream = self._streams.get(stream_id)
        if stream is None or stream.refused:
            nghttp2_session_consume(session, stream_id, length)  # nobody reads it: drop it
            return 0
        stream.unconsumed += <Py_ssize_t>length
        self._on_data(stream_id, PyBytes_FromStringAndSize(<const char *>data, length))
    except BaseException as error:
        return self._failed(error)
    return 0


cdef int _on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                          void *user_data) noexcept:
    cdef H2Session self = <H2Session>user_data
    cdef _Stream stream
    try:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return 0
        if stream.unconsumed:
            # The connection window counted these bytes; the stream's window died with it.
            nghttp2_session_consume_connection(session, stream.unconsumed)
        if self.server:
            self._recent_closed.append(stream_id)
        if error_code == NGHTTP2_NO_ERROR:
            self._control_allowance += CONTROL_REFILL
            if self._control_allowance > CONTROL_ALLOWANCE:
                self._control_allowance = CONTROL_ALLOWANCE
        if stream.announced:
            self._on_stream_closed(stream_id, error_code)
    except BaseException as error:
        return self._failed(error)
    return 0
