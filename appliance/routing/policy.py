"""Header policy: remove / set / add edits, compiled once per vhost and rule."""

from __future__ import annotations

from appliance.config.schema import HeaderPolicyConfig

Headers = list[tuple[bytes, bytes]]


class HeaderPolicy:
    """A fixed sequence of header edits (vhost's first, then the rule's)."""

    __slots__ = ("_steps",)

    def __init__(self, configs: list[HeaderPolicyConfig]) -> None:
        # Each step: names to drop (lowercase), then headers to append.
        self._steps: list[tuple[frozenset[bytes], Headers]] = []
        for config in configs:
            drop = {name.lower().encode() for name in config.remove}
            drop |= {name.lower().encode() for name in config.set}
            append = [(n.encode(), v.encode()) for n, v in config.set.items()]
            append += [(n.encode(), v.encode()) for n, v in config.add.items()]
            if drop or append:
                self._steps.append((frozenset(drop), append))

    @classmethod
    def compile(cls, configs: list[HeaderPolicyConfig]) -> HeaderPolicy | None:
        """The policy, or None when it would change nothing (the common, free case)."""
        policy = cls(configs)
        return policy if policy._steps else None

    def apply(self, headers: Headers) -> Headers:
        for drop, append in self._steps:
            if drop:
                headers = [(n, v) for n, v in headers if n.lower() not in drop]
            if append:
                headers = headers + append
        return headers
