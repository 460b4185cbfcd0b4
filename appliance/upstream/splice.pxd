# Cython declarations for splice.py (compiled build; the .py stays the source, see
# appliance/_build_modules.txt). SpliceHolder is an extension type so that connection
# classes can be extension types too: a cdef class may only have a cdef base.

cdef class SpliceHolder:
    cdef public object splice

    cpdef stop_splice(self)
