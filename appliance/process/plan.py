"""How many worker slots a configuration asks for, and the CPU of each."""

from __future__ import annotations

import os

from appliance.config.schema import ProcessConfig


def _ranges(cpus: list[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def slot_cpus(process: ProcessConfig) -> list[int]:
    """CPU of each slot (slot i → i-th CPU, round-robin); raise ValueError if unusable.

    Checked at load time (`rproxyd -t`) and before a reload rolls out, because the
    CPUs this process may use are a property of the machine and the unit, not the file.
    """
    usable = os.sched_getaffinity(0)
    missing = [cpu for cpu in process.cpus if cpu not in usable]
    if missing:
        raise ValueError(f"CPU {_ranges(missing)} not usable by this process "
                         f"(usable: {_ranges(list(usable))})")
    cpus = process.cpus or sorted(usable)
    count = process.workers or len(cpus)
    return [cpus[i % len(cpus)] for i in range(count)]
