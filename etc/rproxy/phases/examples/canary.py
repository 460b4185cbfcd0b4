"""Canary by header: requests carrying X-Canary: 1 go to a canary server.

    [phases]
    module = "/etc/rproxy/phases/examples/canary.py"

The canary here is a server no backend lists, named by a Peer: its connections are
pooled on demand by each worker. To use a configured backend instead (with its
balancing and health checks), return its name: `return "canary"`.
"""

from __future__ import annotations

from appliance.phases import Peer, Phases

# Made once: peers compare by value and each distinct one gets its own pool.
CANARY = Peer("127.0.0.1:9090", connect_timeout=1.0, read_timeout=10.0)


class Canary(Phases):
    def new_ctx(self) -> None:
        return None  # no phase here keeps state

    def upstream_peer(self, req, ctx):
        if req.headers.get("X-Canary") == "1":
            return CANARY
        return None  # everyone else: the route's backend

    def upstream_request_filter(self, req, ctx):
        # The origin need not see the switch (and a cache in front of it must not key on it).
        req.headers.remove("X-Canary")
