# Cython declarations for headers.py (compiled build): serialize_fields, connection_options and
# response_name_action as C functions that downstream.py, request_head.py and connection.py
# cimport, so building a head or reading a header name or a Connection header makes no Python call.

cimport cython

cpdef serialize_fields(list lines, headers)
cpdef tuple connection_options(bytes value)

@cython.locals(lengths=bytes, size=Py_ssize_t, known=dict)
cpdef int response_name_action(bytes name) except? -1
