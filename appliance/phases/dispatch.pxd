# Cython declarations for dispatch.py (compiled build; the .py stays the source). The
# dispatch record is an extension type that exchange.pxd types `Exchange.phases` as: each
# phase's test on the request path is a C field read, not a named-tuple lookup.

cdef class PhaseDispatch:
    cdef readonly object fail_to_proxy
    cdef readonly object logging
    cdef readonly str name
    cdef readonly object new_ctx
    cdef readonly object request_filter
    cdef readonly bint request_filter_async
    cdef readonly object response_body_filter
    cdef readonly object response_filter
    cdef readonly bint response_side
    cdef readonly object upstream_peer
    cdef readonly bint upstream_peer_async
    cdef readonly object upstream_request_filter
