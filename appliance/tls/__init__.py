"""TLS termination: contexts and SNI, certificate checks, X-SSL headers, shared ticket keys.

See docs/tls.md for the operator's view and the design of session resumption.
"""
