# cython: language_level=3
"""TCP_CORK on a client socket, set by its file descriptor in C.

A client connection corks its socket before the last response it writes, so that the FIN
of the close leaves in the same segment as the response's last bytes (downstream.py,
_cork_last_response). uvloop's transport hands out its socket as a PseudoSocket whose
setsockopt builds and detaches a Python socket object on every call: 4.3 µs a call on this
machine, against 1.4 µs for the system call itself (timeit, 2026-12-07). On a new connection
per request this binding made a request about 6% cheaper (perf/README.md).

Like the HTTP/2 binding, it is C code both builds load, not a choice between builds.
"""

from cpython.exc cimport PyErr_SetFromErrno

cdef extern from "<sys/socket.h>" nogil:
    int setsockopt(int fd, int level, int optname, const void* optval, unsigned int optlen)

cdef extern from "<netinet/in.h>" nogil:
    int IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    int TCP_CORK


def set_cork(int fd, bint on):
    """Cork (on) or uncork the TCP socket `fd`; uncorking sends what the cork held."""
    cdef int value = on
    if setsockopt(fd, IPPROTO_TCP, TCP_CORK, &value, sizeof(value)) != 0:
        PyErr_SetFromErrno(OSError)
