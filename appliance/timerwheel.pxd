# Cython declarations for timerwheel.py (compiled build): every request sets its backend
# connection's read deadline and its client's keep-alive deadline through the wheel.

cdef class TimerWheel:
    cdef object __weakref__
    cdef public Py_ssize_t _armed
    cdef public list _backlog
    cdef public Py_ssize_t _draining
    cdef public list _heap
    cdef public object _loop
    cdef public bint _scheduled
    cdef public dict _slots
    cdef public object _timer

    cpdef set(self, entry, double timeout)
    cpdef cancel(self, entry)
    cpdef file(self, deadline, double when)
    cpdef unfile(self, deadline)
    cpdef _arm(self, Py_ssize_t slot)
    cpdef _tick(self)
    cpdef _take_due(self)
    cpdef _work(self)
