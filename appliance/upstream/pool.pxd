# Cython declarations for pool.py (compiled build): the dispatch of a request to an idle
# connection, and the release of a connection, through typed fields and cpdef methods.

cimport cython

from appliance.http.exchange cimport Exchange
from appliance.upstream.connection cimport BackendConnection

cdef class PendingQueue:
    cdef public object _loop
    cdef public object _on_expired
    cdef public double _timeout
    cdef public object _timer
    cdef public object entries

    cpdef push(self, exchange, bint front=*)
    cpdef pop(self)

cdef class Server:
    cdef public Py_ssize_t active
    cdef public object address
    cdef public object config
    cdef public Py_ssize_t connect_failures
    cdef public Py_ssize_t connecting
    cdef public bytes host_line
    cdef public list idle
    cdef public Py_ssize_t live
    cdef public object passive
    cdef public PendingQueue pending
    cdef public BackendPool pool
    cdef public object probe
    cdef public double retry_at
    cdef public double rtt
    cdef public bint single_use
    cdef public object tls
    cdef public object tls_name
    cdef public object weight

    cpdef bint healthy(self, double now)
    cpdef bint can_connect(self, double now)
    cpdef bint usable(self, double now)
    cpdef note_rtt(self, double seconds)
    cpdef release(self, BackendConnection conn)
    @cython.locals(conn=BackendConnection)
    cpdef BackendConnection take_idle(self)

cdef class BackendPool:
    cdef public double _budget
    cdef public double _budget_step
    cdef public object config
    cdef public object default_balancer
    cdef public object limits
    cdef public object loop
    cdef public object name
    cdef public PendingQueue pending
    cdef public Py_ssize_t pending_timeouts
    cdef public object pipes
    cdef public object redirect_status
    cdef public object request_head
    cdef public object retry_statuses
    cdef public list servers

    cpdef acquire(self, Exchange exchange)
    @cython.locals(server=Server, conn=BackendConnection)
    cpdef _dispatch(self, Exchange exchange, bint front)
    @cython.locals(server=Server)
    cpdef on_idle(self, BackendConnection conn)
