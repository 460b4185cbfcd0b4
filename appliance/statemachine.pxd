# Cython declarations for statemachine.py (compiled build): every state change of the request
# path's machines (client, exchange, backend connection, splice) checks its move here.

cdef class Transitions:
    cdef frozenset _moves
    cdef public object machine

    cpdef check(self, old, new, which=*)
