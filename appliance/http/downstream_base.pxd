# Cython declarations for downstream_base.py (compiled build): the downstream every kind
# of client extends (HTTP/1 connection, HTTP/2 stream), an extension type whose seam methods
# are cpdef, so the backend side (a `client` local typed DownstreamBase in connection.pxd)
# calls whichever kind through the vtable.

cimport cython

from appliance.context cimport WorkerContext
from appliance.http.exchange cimport Exchange
from appliance.routing.router cimport Router, Vhost
from appliance.upstream.splice cimport SpliceHolder

cdef class DownstreamBase(SpliceHolder):
    cdef public object body_filter
    cdef public WorkerContext ctx
    cdef public object forwarded_tail
    cdef public object peer_ip
    cdef public Py_ssize_t peer_port
    cdef public object phase_task
    cdef public Py_ssize_t sent
    cdef public object tls
    cdef public bint trusted
    cdef public bint write_paused

    @cython.locals(router=Router, vhost=Vhost)
    cpdef _start(self, Exchange exchange)
    cpdef bint _request_phases(self, Exchange exchange, vhost, path) except -1
    cpdef _route(self, Exchange exchange, Vhost vhost, path)
    cpdef _cancel_phase(self, Exchange exchange)
    cpdef fail(self, Exchange exchange, failure)
    cpdef _report(self, Exchange exchange)
    cpdef _detach_pending(self, Exchange exchange)
    cpdef _abandon(self, Exchange exchange)
    cpdef _send_error(self, Exchange exchange, failure, bint keep_alive)
    cpdef _send_answer(self, Exchange exchange, response, bint keep_alive)
    cpdef _finish(self, Exchange exchange, bint keep_alive)
    cpdef bint _closed(self) except -1
    cpdef bint response_keep_alive(self, Exchange exchange) except -1
    cpdef start_response(self, Exchange exchange, status, reason, headers, version, via, int body)
    cpdef flush(self)
    cpdef send_body(self, data)
    cpdef finish(self, Exchange exchange, trailers)
    cpdef pause_reading(self, int reason)
    cpdef resume_reading(self, int reason)
    cpdef close(self, bint force=*)
