# Cython declarations for statemachine.py (compiled build): every state change of the request
# path's machines (client, exchange, backend connection, splice) checks its move here: for
# IntEnum states, a C shift and test of the state's mask.

cimport cython

cdef Py_ssize_t MASK_BITS

cdef class Transitions:
    cdef list _masks
    cdef frozenset _moves
    cdef public object machine

    @cython.locals(masks=list, mask="unsigned long long", bit=Py_ssize_t)
    cpdef check(self, old, new, which=*)
