# Cython declarations for recorder.py (compiled build): exchange_done runs once per request,
# its offsets and tables in typed fields.

cimport cython

from appliance.http.exchange cimport Exchange
from appliance.observe.observer cimport Observer

# Offsets inside a route's, server's or backend's block of cells, as C integers.
cdef Py_ssize_t _R_IN, _R_OUT, _R_DUR, _R_DUR_SUM, _S_SUM, _B_WAIT, _B_WAIT_SUM, _SCALE

# The histogram bounds, and their bucket lookup as a C function.
cdef double[::1] _BOUNDS

@cython.locals(count=Py_ssize_t, i=Py_ssize_t)
cpdef Py_ssize_t _bucket(double seconds)

cdef class Recorder(Observer):
    cdef public dict _backends
    cdef public object _cells
    cdef public Py_ssize_t _h2
    # The counts, 64-bit: each addition of exchange_done a C one (a list costs 3-4% of a request).
    cdef long long[::1] _counts
    cdef public object _loop
    cdef public Py_ssize_t _no_route
    cdef public Py_ssize_t _phase_errors
    cdef public Py_ssize_t _proxy_refused
    cdef public dict _routes
    cdef public dict _servers
    cdef public Py_ssize_t _timeouts
    cdef public object _timer
    cdef public Py_ssize_t _tunnels
    cdef public Py_ssize_t _used
    cdef public Py_ssize_t _waiting
    cdef public Py_ssize_t _worker
    cdef public object access
    cdef public object clients
    cdef public object idle
    cdef public object tunnels

    @cython.locals(base=Py_ssize_t, status_class=Py_ssize_t, bucket=Py_ssize_t, ended=double,
                   duration=double, spent=double, waited=double)
    cpdef exchange_done(self, Exchange exchange)
    cpdef start(self)
    cpdef _tick(self)
    cpdef sync(self)
