# Cython declarations for request_head.py (compiled build).

from appliance.http.exchange cimport Exchange

cdef class RequestHead:
    cdef public bytes _via_line_10
    cdef public bytes _via_line_11
    cdef public bytes via

    cpdef serialize(self, Exchange exchange)
