"""HTTP/1.x on both sides of the proxy: client and backend protocols, heads, errors."""
