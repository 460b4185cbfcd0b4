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


def given(raw: Any) -> str:
    """A raw value as the message's "got ..." shows it: booleans as TOML spells them."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return repr(raw)


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint written as host:port ([v6]:port for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One origin server of a backend, with its balancing weight."""

    address: Address
    weight: int = 1


def parse_server(raw: Any) -> ServerSpec:
    """"host:port", or an inline table {address = "host:port", weight = N}."""
    if isinstance(raw, str):
        return ServerSpec(parse_address(raw))
    if isinstance(raw, dict):
        unknown = set(raw) - {"address", "weight"}
        if unknown:
            raise ValueError(f"unknown server key(s) {', '.join(sorted(unknown))}; expected address, weight")
        weight = raw.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
            raise ValueError(f"expected a weight from 1 to 1000, got {given(weight)}")
        return ServerSpec(parse_address(raw.get("address")), weight)
    raise ValueError(f"expected \"host:port\" or {{address = \"host:port\", weight = N}}, got {given(raw)}")


def parse_network(raw: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR block: "10.0.0.0/8", "::1"."""
    if not isinstance(raw, str):
        raise ValueError(f"expected an address or CIDR block such as \"10.0.0.0/8\", got {given(raw)}")
    try:
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise ValueError(f"expected an address or CIDR block such as \"10.0.0.0/8\", "
                         f"got {given(raw)}") from None


def parse_duration(raw: Any) -> float:
    """Seconds, as a number or a string with a unit: 500ms, 10s, 2m, 1h."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str) and (m := _DURATION.match(raw)):
        value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration such as 10, \"10s\" or \"500ms\", got {given(raw)}")
    if value < 0:
        raise ValueError(f"expected a duration of 0 or more, got {given(raw)}")
    return value


def parse_size(raw: Any) -> int:
    """Bytes, as an integer or a string with a binary unit: 16k, 4m, 1g."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and (m := _SIZE.match(raw)):
        unit = (m.group(2) or "").lower()[:1]
        value = int(m.group(1)) * _SIZE_UNITS[unit]
    else:
        raise ValueError(f"expected a size such as 8192, \"16k\" or \"1g\", got {given(raw)}")
    if value < 0:
        raise ValueError(f"expected a size of 0 or more, got {given(raw)}")
    return value


def parse_address(raw: Any) -> Address:
    """host:port, with the host a name or an IP address, IPv6 in brackets."""
    if not isinstance(raw, str):
        raise ValueError(f"expected \"host:port\", got {given(raw)}")
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected \"host:port\", got {given(raw)}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"expected \"[ipv6]:port\", got {given(raw)}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write IPv6 addresses in brackets, as \"[::1]:80\", got {given(raw)}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port from 0 to 65535, got {port_text!r}")
    return Address(host, int(port_text))


def parse_worker_count(raw: Any) -> int:
    """"auto" (0: one worker per usable CPU) or a positive integer."""
    if raw == "auto":
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ValueError(f"expected \"auto\" or a worker count of 1 or more, got {given(raw)}")
    return raw


def parse_cpu_list(raw: Any) -> list[int]:
    """CPU numbers as a list of integers or a taskset-style string: "0-3,6"."""
    if isinstance(raw, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        cpus = list(raw)
    elif isinstance(raw, str):
        cpus = []
        for part in filter(None, (p.strip() for p in raw.split(","))):
            first, _, last = part.partition("-")
            if not first.isdigit() or (last and not last.isdigit()):
                raise ValueError(f"expected CPU numbers such as \"0-3,6\", got {given(raw)}")
            cpus.extend(range(int(first), int(last or first) + 1))
    else:
        raise ValueError(f"expected a CPU list such as [0, 1] or \"0-3,6\", got {given(raw)}")
    if any(cpu < 0 for cpu in cpus) or len(set(cpus)) != len(cpus):
        raise ValueError(f"expected distinct CPU numbers of 0 or more, got {given(raw)}")
    return cpus
