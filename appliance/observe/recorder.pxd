# Cython declarations for recorder.py (compiled build): exchange_done runs once per request,
# its offsets and tables in typed fields.

from appliance.observe.observer cimport Observer

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
    cdef public Py_ssize_t _waiting
    cdef public Py_ssize_t _worker
    cdef public object access
    cdef public object clients
    cdef public object idle
    cdef public object tunnels

    cpdef start(self)
    cpdef _tick(self)
    cpdef sync(self)
