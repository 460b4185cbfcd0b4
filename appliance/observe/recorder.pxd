# Cython declarations for recorder.py (compiled build): exchange_done runs once per request,
# its offsets and tables in typed fields.

cimport cython

from appliance.http.exchange cimport Exchange
from appliance.observe.observer cimport Observer

# The metrics layout's offsets, typed: exchange_done adds them to a typed base, in C.
cdef Py_ssize_t _R_IN, _R_OUT, _R_DUR, _R_DUR_SUM, _S_SUM, _B_WAIT, _B_WAIT_SUM
cdef double _SCALE

cdef class Recorder(Observer):
    cdef public dict _backends
    cdef public object _cells
    cdef public Py_ssize_t _h2
    cdef public list _counts
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
    cdef public Py_ssize_t _worker
    cdef public object access
    cdef public object clients
    cdef public object tunnels

    @cython.locals(cells=list, base=Py_ssize_t, ended=double, duration=double, spent=double, waited=double)
    cpdef exchange_done(self, Exchange exchange)
    cpdef start(self)
    cpdef _tick(self)
    cpdef sync(self)
