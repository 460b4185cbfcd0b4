# Cython declarations for downstream.py (compiled build). The client connection is an
# extension type: typed fields, and the methods one callback calls on the way to the
# transport write are cpdef, so they call each other (and the Exchange) directly.

cimport cython

from appliance.deadline cimport Deadline
from appliance.http.exchange cimport Exchange
from appliance.http.headers cimport connection_options, serialize_fields
from appliance.statemachine cimport Transitions
from appliance.http.downstream_base cimport DownstreamBase

cdef class ClientListener:
    cdef public object ctx
    cdef public object h2
    cdef public bytes proto
    cdef public object site

    cpdef wake(self, idle)

# The move table, typed: _transition() calls its check directly.
cdef Transitions _CLIENT_MOVES

cdef _note_connection_header(Exchange exchange, bytes value)

cdef class ClientConnection(DownstreamBase):
    cdef public Py_ssize_t _read_pauses
    cdef public bint answer_keep_alive
    cdef public Py_ssize_t bypass_remaining
    cdef public bint client_done
    cdef public bint compact_due
    cdef public bint corked
    cdef public list exchanges
    cdef public Py_ssize_t head_raw
    cdef public object held_head
    cdef public bint line_11
    cdef public ClientListener listener
    cdef public object parser
    cdef public Exchange parsing
    cdef public bint reads_capped
    cdef public Py_ssize_t requests_served
    cdef public int response_framing
    cdef public Deadline send_deadline
    cdef public Py_ssize_t slot
    cdef public object state
    cdef public object transport
    cdef public object when
    cdef public object upgrade_held

    cpdef _transition(self, new)
    cpdef data_received(self, data)
    cpdef on_message_begin(self)
    cpdef on_url(self, url)
    @cython.locals(names=dict)
    cpdef on_header(self, bytes name, bytes value)
    cpdef on_headers_complete(self)
    cpdef on_body(self, body)
    cpdef on_message_complete(self)
    cpdef _start_ready(self)
    cpdef _request_body(self, Exchange exchange, body)
    cpdef _forward_length_body(self, data)
    cpdef _length_body_done(self, Exchange exchange)
    @cython.locals(head=list)
    cpdef start_response(self, Exchange exchange, status, reason, headers, version, via, int body)
    cpdef flush(self)
    cpdef bint response_keep_alive(self, Exchange exchange) except -1
    cpdef send_body(self, data)
    cpdef finish(self, Exchange exchange, trailers)
    cpdef _finish(self, Exchange exchange, bint keep_alive)
    cpdef _send_error(self, Exchange exchange, failure, bint keep_alive)
    cpdef _send_answer(self, Exchange exchange, response, bint keep_alive)
    cpdef bint _closed(self) except -1
    cpdef pause_reading(self, int reason)
    cpdef uncap_reads(self)
    cpdef resume_reading(self, int reason)
    cpdef close(self, bint force=*)
    cpdef bint _compact(self) except -1
