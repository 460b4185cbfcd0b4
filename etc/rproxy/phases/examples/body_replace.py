"""A body filter that replaces a string in HTML responses (here: an internal URL).

    [phases]
    module = "/etc/rproxy/phases/examples/body_replace.py"

Defining response_body_filter costs the routes that run this class the splice(2)
relay of large bodies: every byte passes through Python. The proxy re-frames the
body (chunked) since its length changes. Compressed bodies are left alone: the
string is not there to find.
"""

from __future__ import annotations

from appliance.phases import Phases

OLD = b"http://app.internal:8080/"
NEW = b"https://www.example.com/"


class BodyReplace(Phases):
    def new_ctx(self) -> dict[str, object]:
        return {"rewrite": False, "tail": b""}

    def response_filter(self, req, resp, ctx):
        kind = resp.headers.get("Content-Type", "")
        ctx["rewrite"] = kind.startswith("text/html") and "Content-Encoding" not in resp.headers

    def response_body_filter(self, req, chunk, end, ctx):
        if not ctx["rewrite"]:
            return chunk
        data = ctx["tail"] + chunk
        if end:
            ctx["tail"] = b""
            return data.replace(OLD, NEW)
        # OLD may be cut between two chunks: hold back the last len(OLD) - 1 bytes, unreplaced,
        # until the next chunk (or the end) shows whether they begin an occurrence. The cut
        # never falls inside an occurrence wholly in `data`: those all end by `safe`.
        last = data.rfind(OLD)
        safe = max(last + len(OLD) if last >= 0 else 0, len(data) - (len(OLD) - 1))
        ctx["tail"] = data[safe:]
        return data[:safe].replace(OLD, NEW)
