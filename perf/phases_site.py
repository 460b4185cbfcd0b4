"""The operator phases of the `small_get_phases` scenario (perf/harness.py).

Issue 14's cost budget: a class that defines request_filter and upstream_request_filter,
each doing one header operation, may cost at most 15% of small-GET requests per
CPU-second against plain rproxyd in the same run.
"""

from appliance.phases import Phases, Response


class Bench(Phases):
    def request_filter(self, req, ctx):
        if req.headers.get("x-deny") is not None:  # one header read per request
            return Response(403)
        return None

    def upstream_request_filter(self, req, ctx):
        req.headers.set("X-Bench", "1")  # one header write per request
