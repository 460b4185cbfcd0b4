# Cython declarations for context.py (compiled build): the worker context as an extension
# type, read by the client side on every request through typed fields.

from appliance.observe.observer cimport Observer
from appliance.routing.router cimport Router
from appliance.timerwheel cimport TimerWheel

cdef class WorkerContext:
    cdef public set clients
    cdef public double compact_after
    cdef public bint draining
    cdef public object flood_log
    cdef public double header_timeout
    cdef public object idle
    cdef public double keepalive_timeout
    cdef public object limits
    cdef public object loop
    cdef public Py_ssize_t max_pipelined
    cdef public object new_request_id
    cdef public Observer observer
    cdef public object peer_choice
    cdef public object peer_pools
    cdef public object peers
    cdef public dict pools
    cdef public Router router
    cdef public object timeout_log
    cdef public object trusted
    cdef public object tunnels
    cdef public bytes via
    cdef public TimerWheel wheel
