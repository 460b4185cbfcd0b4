# Cython declarations for exchange.py (compiled build): the exchange as an extension type,
# its fields C struct members, read and written by the two sides without a dict or slot lookup.

from appliance.phases.dispatch cimport PhaseDispatch
from appliance.statemachine cimport Transitions

# The move table, typed: transition() calls its check directly.
cdef Transitions _MOVES

cdef class Exchange:
    cdef public object backend
    cdef public object body_buffer
    cdef public Py_ssize_t body_buffered
    cdef public Py_ssize_t body_received
    cdef public bint body_streamed
    cdef public Py_ssize_t bytes_out
    cdef public bint chunked
    cdef public object client
    cdef public bint close_after
    cdef public bint conn_close
    cdef public bint conn_keep_alive
    cdef public double connect_time
    cdef public object content_length
    cdef public bint expect_continue
    cdef public object failure
    cdef public double first_byte
    cdef public object forwarded_for
    cdef public Py_ssize_t head_bytes
    cdef public object headers
    cdef public object hop_names
    cdef public object host
    cdef public bint is_head
    cdef public bint keep_alive
    cdef public object method
    cdef public double pending_since
    cdef public object phase_ctx
    cdef public PhaseDispatch phases
    cdef public double queue_wait
    cdef public object real_ip
    cdef public Py_ssize_t redirects
    cdef public object req
    cdef public bint request_done
    cdef public object request_id
    cdef public object resp
    cdef public bint response_started
    cdef public Py_ssize_t retries
    cdef public object route
    cdef public object server
    cdef public Py_ssize_t stale_retries
    cdef public double started
    cdef public object state
    cdef public object status
    cdef public object target
    cdef public object trailers
    cdef public object tried
    cdef public object upgrade
    cdef public object upstream
    cdef public double upstream_time
    cdef public object url
    cdef public object version
    cdef public object via

    cpdef transition(self, new)
    cpdef leave_queue(self, double now)
    cpdef drop_body(self)
    cpdef bint body_held(self)
    cpdef bint replayable(self)
