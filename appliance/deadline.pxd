# Cython declarations for deadline.py (compiled build): moved on every read of every connection.

from appliance.timerwheel cimport TimerWheel

cdef class Deadline:
    cdef public TimerWheel _wheel
    cdef public object on_expiry
    cdef public Py_ssize_t slot
    cdef public object when

    cpdef set(self, double timeout)
    cpdef clear(self)
    cpdef cancel(self)
