# Cython declarations for downstream.py (compiled build). The client connection is an
# extension type: typed fields, and the methods one callback calls on the way to the
# transport write are cpdef, so they call each other (and the Exchange) directly.

cimport cython

from appliance.context cimport WorkerContext
from appliance.deadline cimport Deadline
from appliance.http.exchange cimport Exchange
from appliance.routing.router cimport Router
from appliance.statemachine cimport Transitions
from appliance.upstream.splice cimport SpliceHolder

# The move table, typed: _transition() calls its check directly.
cdef Transitions _CLIENT_MOVES

cdef class ClientConnection(SpliceHolder):
    cdef public Py_ssize_t _read_pauses
    cdef public bint answer_keep_alive
    cdef public object body_filter
    cdef public Py_ssize_t bypass_remaining
    cdef public WorkerContext ctx
    cdef public list exchanges
    cdef public object forwarded_tail
    cdef public bint half_closed
    cdef public Py_ssize_t head_raw
    cdef public object held_head
    cdef public object parser
    cdef public Exchange parsing
    cdef public object peer_ip
    cdef public Py_ssize_t peer_port
    cdef public object phase_task
    cdef public object proto
    cdef public int response_framing
    cdef public Deadline send_deadline
    cdef public Py_ssize_t sent
    cdef public Py_ssize_t slot
    cdef public object state
    cdef public object tls
    cdef public object transport
    cdef public bint trusted
    cdef public object when
    cdef public object upgrade_held
    cdef public bint write_paused

    cpdef _transition(self, new)
    cpdef data_received(self, data)
    cpdef on_message_begin(self)
    cpdef on_url(self, url)
    cpdef on_header(self, name, value)
    cpdef on_headers_complete(self)
    cpdef on_body(self, body)
    cpdef on_message_complete(self)
    cpdef _start_ready(self)
    @cython.locals(router=Router)
    cpdef _start(self, Exchange exchange)
    cpdef bint _request_phases(self, Exchange exchange, vhost, path) except -1
    cpdef _route(self, Exchange exchange, vhost, path)
    cpdef _request_body(self, Exchange exchange, body)
    cpdef _forward_length_body(self, data)
    cpdef _length_body_done(self, Exchange exchange)
    cpdef start_response(self, Exchange exchange, status, reason, headers, version, via, int body)
    cpdef flush(self)
    cpdef bint response_keep_alive(self, Exchange exchange)
    cpdef send_body(self, data)
    cpdef finish(self, Exchange exchange, trailers)
    cpdef fail(self, Exchange exchange, failure)
    cpdef _report(self, Exchange exchange)
    cpdef _finish(self, Exchange exchange, bint keep_alive)
    cpdef _abandon(self, Exchange exchange)
    cpdef _detach_pending(self, Exchange exchange)
    cpdef _cancel_phase(self, Exchange exchange)
    cpdef pause_reading(self, int reason)
    cpdef resume_reading(self, int reason)
    cpdef close(self, bint force=*)
