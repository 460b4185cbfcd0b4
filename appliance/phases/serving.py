"""Until the request path calls the phases, a configuration with [phases] must not start.

`rproxyd -t` accepts and checks [phases]; serving it would silently run without the
operator's code (no authentication, no routing of theirs), which is worse than not
starting. The supervisor asks `refusal` before it starts or rolls out a generation.
This module goes away when the request path is wired to the phases.
"""

from __future__ import annotations

from appliance.config.schema import Config

NOT_SERVED = "[phases] is checked by -t but not served yet"


def refusal(config: Config) -> str | None:
    """Why `config` cannot be served, or None."""
    return NOT_SERVED if config.phases.module else None
