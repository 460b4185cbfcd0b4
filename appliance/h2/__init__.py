"""HTTP/2: the compiled libnghttp2 binding (session.pyx, built in both builds) and what drives it."""

from __future__ import annotations


def describe() -> str:
    """One line for `rproxyd --version`: the libnghttp2 the binding runs with, or why none."""
    try:
        from appliance.h2.session import NGHTTP2_VERSION
    except ImportError as exc:
        return f"HTTP/2: unavailable ({exc}; run make)"
    return f"HTTP/2: libnghttp2 {NGHTTP2_VERSION}"
