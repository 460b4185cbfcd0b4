# Cython declarations for headers.py (compiled build; the .py stays the source, see
# appliance/_build_modules.txt). Headers is an extension type: a request with phases makes
# or rebinds one, and every get and set reads its fields, as C fields, not slot descriptors.

cdef class Headers:
    cdef public frozenset _owned
    cdef public list _raw
    cdef public bint _ssl_owned
    cdef public bint edited
    cdef public bint writable

    cpdef tuple _check(self, name)
