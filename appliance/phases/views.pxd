# Cython declarations for views.py (compiled build; the .py stays the source). The views are
# extension types: every request with phases makes a Request, whose fields are C struct
# members, not slot descriptors (a view made in 218 ns instead of 400, perf/README.md).

from appliance.phases.headers cimport Headers

cdef class _MessageView:
    cdef public Headers _headers  # made when a phase first reads .headers
    cdef public list _raw_headers
    cdef public bint _writable

cdef class Request(_MessageView):
    cdef public object _client_ip
    cdef public object _host
    cdef public object _method
    cdef public object _path
    cdef public object _query
    cdef public object _request_id
    cdef public object _target
    cdef public object _upgrade

cdef class ResponseHead(_MessageView):
    cdef public int _status
