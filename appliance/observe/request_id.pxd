# Cython declarations for request_id.py (compiled build): the odometer's digits are a typed
# bytearray and its indices C integers, so counting up is array reads and writes in C.

cimport cython

cdef class RequestIds:
    cdef bytearray _digits

    @cython.locals(digits=bytearray, current=bytes, i=Py_ssize_t, digit=int)
    cpdef bytes next_id(self)
