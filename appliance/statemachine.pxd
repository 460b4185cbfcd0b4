# Cython declarations for statemachine.py (compiled build): every state change of the request
# path's machines (client, exchange, backend connection, splice) checks its move here.

cimport cython

cdef class Transitions:
    cdef dict _targets
    cdef public object machine

    @cython.locals(targets=frozenset)
    cpdef check(self, old, new, which=*)
