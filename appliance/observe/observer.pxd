# Cython declarations for observer.py (compiled build): the base of the worker's Recorder,
# an extension type so that the Recorder can be one. The exchange is typed: exchange_done reads
# ten of its fields once per request, as C struct members.

from appliance.http.exchange cimport Exchange

cdef class Observer:
    cpdef exchange_done(self, Exchange exchange)
    cpdef client_timeout(self, phase)
    cpdef phase_error(self, phase)
    cpdef proxy_header_refused(self, reason)
    cpdef tunnel_closed(self, reason, up, down)
    cpdef tls_handshake(self, resumed)
    cpdef h2_connection(self, opened)
    cpdef h2_stream(self, opened)
    cpdef h2_goaway(self, error_code)
