"""Parsers for the value kinds a config key can hold.

Each parser takes the raw TOML value and returns the typed value, or raises
ValueError with a sentence saying what was expected. The loader adds the file
and key path, so messages here stay short.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint written as host:port ([v6]:port for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_duration(raw: Any) -> float:
    """Seconds, as a number or a string with a unit: 500ms, 10s, 2m, 1h."""
    if isinstance(raw, bool):
        raise ValueError("expected a duration such as 10, \"10s\" or \"500ms\"")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str) and (m := _DURATION.match(raw)):
        value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 10, \"10s\" or \"500ms\", got {raw!r}")
    if value < 0:
        raise ValueError(f"expected a duration of 0 or more, got {raw!r}")
    return value


def parse_size(raw: Any) -> int:
    """Bytes, as an integer or a string with a binary unit: 16k, 4m, 1g."""
    if isinstance(raw, bool):
        raise ValueError("expected a size such as 8192, \"16k\" or \"1g\"")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and (m := _SIZE.match(raw)):
        unit = (m.group(2) or "").lower()[:1]
        value = int(m.group(1)) * _SIZE_UNITS[unit]
    else:
        raise ValueError(f"expected a size such as 8192, \"16k\" or \"1g\", got {raw!r}")
    if value < 0:
        raise ValueError(f"expected a size of 0 or more, got {raw!r}")
    return value


def parse_address(raw: Any) -> Address:
    """host:port, with the host a name or an IP address, IPv6 in brackets."""
    if not isinstance(raw, str):
        raise ValueError(f"expected \"host:port\", got {raw!r}")
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected \"host:port\", got {raw!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"expected \"[ipv6]:port\", got {raw!r}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write IPv6 addresses in brackets, as \"[::1]:80\", got {raw!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port from 0 to 65535, got {port_text!r}")
    return Address(host, int(port_text))
