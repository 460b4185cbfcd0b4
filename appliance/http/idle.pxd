# Cython declarations for idle.py (compiled build): an idle keep-alive connection's protocol as
# a small extension type (typed port and deadline, no instance dict, no vtable), and the
# worker's queue of them.

from appliance.timerwheel cimport TimerWheel

cdef class IdleClient:
    cdef public double deadline
    cdef public tuple facts
    cdef public object listener
    cdef public IdleClient next
    cdef public int port
    cdef public int fd  # beside port: the two ints share one 8-byte slot, the object stays 96 bytes
    cdef public IdleClient prev
    cdef public object tls
    cdef public object transport
    # No cpdef methods: they would add a vtable pointer to every idle connection (8 bytes, and
    # 16 with the allocator's rounding); uvloop calls data_received through its bound method anyway.

cdef class IdleClients:
    cdef public object _epoll
    cdef public list _fds
    cdef public object _loop
    cdef public TimerWheel _wheel
    cdef public Py_ssize_t count
    cdef public IdleClient head
    cdef public object _sweep
    cdef public Py_ssize_t slot
    cdef public IdleClient tail
    cdef public Py_ssize_t waking
    cdef public object when

    cpdef push(self, IdleClient client)
    cpdef remove(self, IdleClient client)
    cpdef on_expiry(self)
    cpdef close_all(self, bint force)
    cpdef detach(self, IdleClient client)
    cpdef int _unwatch(self, IdleClient client)
    cpdef close_detached(self, IdleClient client)
