# Cython declarations for connection.py (compiled build). The backend connection is an
# extension type: typed fields, and the methods of one backend read cpdef, so they call
# each other, the Exchange and the Deadlines directly.

cimport cython

from appliance.deadline cimport Deadline
from appliance.http.downstream_base cimport DownstreamBase
from appliance.http.exchange cimport Exchange
from appliance.http.headers cimport connection_options, response_name_action
from appliance.statemachine cimport Transitions
from appliance.upstream.splice cimport SpliceHolder

# The move table, typed: the state changes call its check directly.
cdef Transitions _MOVES

cdef class BackendConnection(SpliceHolder):
    cdef public int body_mode
    cdef public Py_ssize_t body_seen
    cdef public Py_ssize_t bypass_remaining
    cdef public bint complete
    cdef public double connect_time
    cdef public frozenset consume_statuses
    cdef public object discard
    cdef public Exchange exchange
    cdef public bint extra_bytes
    cdef public Py_ssize_t head_bytes
    cdef public bint head_done
    cdef public object head_reads
    cdef public Py_ssize_t max_head_bytes
    cdef public bint informational
    cdef public int line_11
    cdef public object loop
    cdef public object parser
    cdef public bint parser_clean
    cdef public object peer_watch
    cdef public Deadline read_deadline
    cdef public double read_timeout
    cdef public bint reading_paused
    cdef public bint reads_capped
    cdef public Py_ssize_t requests_served
    cdef public bint resp_chunked
    cdef public bint resp_close
    cdef public object resp_content_length
    cdef public object resp_headers
    cdef public object resp_hop_names
    cdef public bint resp_keep_alive
    cdef public object resp_reason
    cdef public object resp_upgrade
    cdef public object resp_via
    cdef public double sent_at
    cdef public object server
    cdef public object state
    cdef public object trailers
    cdef public object transport
    cdef public Deadline write_deadline

    cpdef _reset_response(self)
    cpdef _transition(self, new)
    cpdef _go_down(self)
    cpdef data_received(self, data)
    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef bint peer_closed(self)
    @cython.locals(client=DownstreamBase)
    cpdef attach(self, Exchange exchange)
    cpdef send_request_bytes(self, data)
    cpdef send_request_chunk(self, data)
    cpdef abandon(self)
    cpdef close(self)
    cpdef on_status(self, reason)
    cpdef on_header(self, bytes name, bytes value)
    cpdef on_headers_complete(self)
    @cython.locals(client=DownstreamBase)
    cpdef on_body(self, body)
    cpdef on_message_complete(self)
    cpdef on_message_begin(self)
    @cython.locals(client=DownstreamBase)
    cpdef _on_head(self, int status)
    @cython.locals(client=DownstreamBase)
    cpdef _after_feed(self)
    @cython.locals(client=DownstreamBase)
    cpdef _forward_length_body(self, data)
    @cython.locals(client=DownstreamBase)
    cpdef _complete_response(self)
    cpdef _cap_reads(self)
    cpdef uncap_reads(self)
