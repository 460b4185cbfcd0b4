"""Structured logging of selected requests to a file of their own: one JSON line each.

    [phases]
    module = "/etc/rproxy/phases/examples/log_selected.py"

Selected: server errors, and every request under /api/admin/. The file is opened by
each worker when it starts (append mode: lines of all workers interleave whole) and
reopened by a reload; for logrotate, use copytruncate or a reload in postrotate.
"""

from __future__ import annotations

import json
import time

from appliance.phases import Phases

LOG_FILE = "/var/log/rproxy/selected.log"
WATCHED_PREFIX = "/api/admin/"


class Started:
    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = time.monotonic()


class LogSelected(Phases):
    log_file = LOG_FILE  # a class attribute, so a subclass (or a test) may point elsewhere

    def __init__(self) -> None:
        # Line-buffered: each record is one write(2) of a whole line.
        self.out = open(self.log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives with the worker)

    def new_ctx(self) -> Started:
        return Started()

    def logging(self, req, resp, error, ctx):
        status = resp.status if resp is not None else 0
        if status < 500 and error is None and not req.path.startswith(WATCHED_PREFIX):
            return
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request_id": req.request_id,
            "client": req.client_ip,
            "method": req.method,
            "host": req.host,
            "path": req.path,
            "status": status,
            "error": None if error is None else str(error),
            "duration_ms": round((time.monotonic() - ctx.at) * 1000, 3),
            "user_agent": req.headers.get("User-Agent"),
        }
        self.out.write(json.dumps(record) + "\n")
