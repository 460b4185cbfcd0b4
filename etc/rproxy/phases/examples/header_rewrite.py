"""A response header rewrite: hide what the origin runs, add security headers, fix redirects.

    [phases]
    module = "/etc/rproxy/phases/examples/header_rewrite.py"

For fixed edits, the response_headers key of a vhost or route is enough (and
cheaper); a phase is for edits that depend on the response, as the Location
rewrite below does.
"""

from __future__ import annotations

from appliance.phases import Phases

INTERNAL_ORIGIN = "http://app.internal:8080"  # what the origin thinks its address is
HIDDEN = ("Server", "X-Powered-By", "X-AspNet-Version")


class HeaderRewrite(Phases):
    def new_ctx(self) -> None:
        return None

    def response_filter(self, req, resp, ctx):
        for name in HIDDEN:
            resp.headers.remove(name)
        resp.headers.set("X-Content-Type-Options", "nosniff")
        if "Strict-Transport-Security" not in resp.headers:
            resp.headers.set("Strict-Transport-Security", "max-age=31536000")
        # An origin behind the proxy redirects to its own address: point it at the public one.
        location = resp.headers.get("Location")
        if location and location.startswith(INTERNAL_ORIGIN):
            resp.headers.set("Location", f"https://{req.host}{location[len(INTERNAL_ORIGIN):]}")
