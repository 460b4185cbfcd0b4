"""Rewrite replacements: nginx-style $1 / ${name} turned into Python templates at load time."""

from __future__ import annotations

import re

_GROUP = re.compile(r"\$(?:(\d+)|\{(\w+)\})")


def expand_template(replacement: str, pattern: re.Pattern[str]) -> str:
    """Convert "$1" and "${name}" to re.sub's \\g<1> / \\g<name>; check every group exists."""
    def convert(match: re.Match[str]) -> str:
        number, name = match.group(1), match.group(2)
        if number is not None and int(number) > pattern.groups:
            raise ValueError(f"${number} refers to a group the rewrite pattern does not have")
        if name is not None and name not in pattern.groupindex:
            raise ValueError(f"${{{name}}} refers to a group the rewrite pattern does not have")
        return f"\\g<{number or name}>"

    # Backslashes in the operator's text are literal, not re.sub escapes.
    return _GROUP.sub(convert, replacement.replace("\\", "\\\\"))
