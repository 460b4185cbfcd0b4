# Cython declarations for headers.py (compiled build): serialize_fields and connection_options
# as C functions that downstream.py, request_head.py and connection.py cimport, so building a
# head or reading a Connection header calls them without a Python call.

cpdef serialize_fields(list lines, headers)
cpdef tuple connection_options(bytes value)
