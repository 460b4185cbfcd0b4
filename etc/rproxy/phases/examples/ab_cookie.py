"""A/B routing by cookie: group "b" goes to backend app_b, everyone else keeps the route's.

    [phases]
    module = "/etc/rproxy/phases/examples/ab_cookie.py"

    [backend.app_b]
    servers = ["10.0.0.21:8080"]

A client without the cookie is put in a group by a hash of its address (SHARE_B of
them in "b"), and the response sets the cookie so it stays there. A client may also
choose: a request with `ab=b` in its Cookie header goes to app_b.
"""

from __future__ import annotations

import zlib

from appliance.phases import Phases

COOKIE = "ab"
BACKEND_B = "app_b"
SHARE_B = 10  # percent of new clients sent to B


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header, or None."""
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


class ABRouting(Phases):
    def new_ctx(self) -> dict[str, object]:
        return {}

    def upstream_peer(self, req, ctx):
        group = cookie_value(req.headers.get("Cookie"), COOKIE)
        if group not in ("a", "b"):
            # Stable for one address, so a client keeps its group even before it stores the cookie.
            group = "b" if zlib.crc32(req.client_ip.encode()) % 100 < SHARE_B else "a"
            ctx["assigned"] = group
        ctx["group"] = group
        return BACKEND_B if group == "b" else None  # None: the route's own backend

    def response_filter(self, req, resp, ctx):
        if "assigned" in ctx:
            cookie = f"{COOKIE}={ctx['assigned']}; Path=/; Max-Age=2592000; SameSite=Lax"
            resp.headers.add("Set-Cookie", cookie)
