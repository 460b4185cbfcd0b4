# Cython declarations for router.py (compiled build): the vhost lookup and the rule match
# run once per request. Route stays a frozen dataclass (a Python class, compiled methods).

cimport cython

from appliance.phases.dispatch cimport PhaseDispatch

cdef class _Matcher:
    cdef public Py_ssize_t index
    cdef public object kind
    cdef public object methods
    cdef public object pattern
    cdef public bytes prefix
    cdef public object route

    cpdef bint matches(self, path)

cdef class Vhost:
    cdef public dict exact
    cdef public object name
    cdef public list others
    cdef public PhaseDispatch phases

    @cython.locals(matcher=_Matcher)
    cpdef match(self, method, path)

cdef class Router:
    cdef public object _default
    cdef public dict _exact
    cdef public list _globs
    cdef public dict _memo

    cpdef vhost(self, host)
    cpdef vhost_name(self, host)
    cpdef _find_vhost(self, host)
