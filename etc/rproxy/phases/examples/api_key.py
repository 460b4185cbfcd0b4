"""API-key authentication: only requests with a known X-Api-Key reach the backend.

    [phases]
    module = "/etc/rproxy/phases/examples/api_key.py"

The keys file holds one client per line, "NAME SHA256-OF-KEY" (make a line with
`printf '%s' "$KEY" | sha256sum`), so the file on disk holds no secret. It is read
when a worker starts; a reload (systemctl reload rproxyd) reads it again.

A request without a key gets 401, with an unknown key 403, each a small JSON body.
The key itself never reaches the backend: it is replaced by X-Api-Client: NAME.
"""

from __future__ import annotations

import hashlib
import json

from appliance.phases import Phases, Response

KEYS_FILE = "/etc/rproxy/phases/api-keys"


def _refusal(status: int, message: str) -> Response:
    body = json.dumps({"error": message}) + "\n"
    return Response(status, {"Content-Type": "application/json", "WWW-Authenticate": "ApiKey"}, body)


class ApiKey(Phases):
    keys_file = KEYS_FILE  # a class attribute, so a subclass (or a test) may point elsewhere

    def __init__(self) -> None:
        # sha256 hex digest -> client name, read once per worker.
        self.clients: dict[str, str] = {}
        with open(self.keys_file, encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) == 2 and not line.startswith("#"):
                    name, digest = fields
                    self.clients[digest.lower()] = name

    def new_ctx(self) -> dict[str, str]:
        return {}

    def request_filter(self, req, ctx):
        key = req.headers.get("X-Api-Key")
        if not key:
            return _refusal(401, "an X-Api-Key header is required")
        # Comparing digests: a set lookup on the hash leaks nothing useful about the keys.
        client = self.clients.get(hashlib.sha256(key.encode("latin-1")).hexdigest())
        if client is None:
            return _refusal(403, "unknown API key")
        ctx["client"] = client
        return None

    def upstream_request_filter(self, req, ctx):
        req.headers.remove("X-Api-Key")
        req.headers.set("X-Api-Client", ctx["client"])
