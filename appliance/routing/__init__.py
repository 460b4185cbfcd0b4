"""Request routing: virtual host by Host header, then route by path."""
