"""A JSON error page: API clients get {"error": ..., "status": ..., "request_id": ...}.

    [phases]
    module = "/etc/rproxy/phases/examples/json_errors.py"

fail_to_proxy runs for every failure the proxy answers itself (no route, no server
up, timeouts, refused requests, an exception in a phase). The request id is the one
the access log and the error log show, so a user's report leads to the log lines.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from appliance.phases import Phases, Response


class JsonErrors(Phases):
    def new_ctx(self) -> None:
        return None

    def fail_to_proxy(self, req, error, ctx):
        status = getattr(error, "status", 502)
        body = {"error": HTTPStatus(status).phrase, "status": status, "request_id": req.request_id}
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if status == 503:
            headers["Retry-After"] = "1"
        return Response(status, headers, json.dumps(body) + "\n")
