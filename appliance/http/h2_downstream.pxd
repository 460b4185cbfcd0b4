# Cython declarations for h2_downstream.py (compiled build): the HTTP/2 connection and its
# streams as extension types. A stream extends DownstreamBase, so the backend side calls it
# through the same vtable as an HTTP/1 connection (appliance/upstream/connection.pxd).

from appliance.context cimport WorkerContext
from appliance.deadline cimport Deadline
from appliance.http.downstream_base cimport DownstreamBase
from appliance.http.exchange cimport Exchange
from appliance.statemachine cimport Transitions

cdef Transitions _MOVES
cdef Py_ssize_t SMALL_BODY

cdef class H2Connection:
    cdef public object config
    cdef public WorkerContext ctx
    cdef public object forwarded_tail
    cdef public list held
    cdef public object peer_ip
    cdef public Py_ssize_t peer_port
    cdef public object proto
    cdef public bint receiving
    cdef public Deadline send_deadline
    cdef public object session
    cdef public Py_ssize_t slot
    cdef public object state
    cdef public dict streams
    cdef public object tls
    cdef public object transport
    cdef public bint trusted
    cdef public object when
    cdef public bint write_paused
    cdef public bint write_soon

    cpdef _transition(self, new)
    cpdef data_received(self, data)
    cpdef _write_out(self)
    cpdef _write_later(self, bint frame)
    cpdef _write_turn(self)

cdef class H2Stream(DownstreamBase):
    cdef public H2Connection conn
    cdef public object content_type
    cdef public Deadline deadline
    cdef public bint dropping
    cdef public bint ended
    cdef public Exchange exchange
    cdef public Py_ssize_t owed
    cdef public int pauses
    cdef public Deadline stall
    cdef public int stream_id

    cpdef request_data(self, data)
    cpdef _pay(self)
    cpdef request_end(self)
    cpdef start_response(self, Exchange exchange, status, reason, headers, version, via, int body)
    cpdef flush(self)
    cpdef bint response_keep_alive(self, Exchange exchange) except -1
    cpdef send_body(self, data)
    cpdef finish(self, Exchange exchange, trailers)
    cpdef _finish(self, Exchange exchange, bint keep_alive)
    cpdef _send_error(self, Exchange exchange, failure, bint keep_alive)
    cpdef _send_answer(self, Exchange exchange, response, bint keep_alive)
    cpdef _respond(self, Exchange exchange, int status, list fields, bytes body)
    cpdef bint _closed(self) except -1
    cpdef pause_reading(self, int reason)
    cpdef resume_reading(self, int reason)
    cpdef close(self, bint force=*)
