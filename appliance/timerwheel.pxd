# Cython declarations for timerwheel.py (compiled build): a request moves its client's deadline
# earlier (keep-alive to header timeout) and so refiles it in the wheel once per request.

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
