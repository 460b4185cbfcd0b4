# Cython declarations for request_head.py (compiled build).

cimport cython

from appliance.http.downstream_base cimport DownstreamBase
from appliance.http.exchange cimport Exchange
from appliance.http.headers cimport serialize_fields

cdef class RequestHead:
    cdef public bytes _via_line_10
    cdef public bytes _via_line_11
    cdef public bytes via

    @cython.locals(client=DownstreamBase, lines=list)
    cpdef serialize(self, Exchange exchange)
