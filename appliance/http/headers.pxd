# Cython declarations for headers.py (compiled build): serialize_fields as a C function that
# downstream.py and request_head.py cimport, so building a head calls it without a Python call.

cpdef serialize_fields(list lines, headers)
