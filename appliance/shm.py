"""Shared memory the supervisor maps before the first fork and keeps for its lifetime.

Each region is an anonymous memfd, mapped MAP_SHARED. Forked workers inherit the
mapping; the in-place upgrade (a re-exec of the supervisor) passes the fd numbers
in the environment and the new image maps the same memory again, so the contents
(heartbeats now; ticket keys and metrics later) survive reloads and upgrades.

Not multiprocessing.shared_memory: that names regions in /dev/shm, which a crash
leaks, and its resource tracker unlinks them behind our back.

To add a region (a later issue's ticket-key ring or metrics area), add its name and
size to `Supervisor.regions()`; a region adopted across an upgrade must keep its size.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class SharedRegion:
    """One named memfd and its shared mapping."""

    name: str
    fd: int
    size: int
    view: mmap.mmap

    @classmethod
    def create(cls, name: str, size: int) -> SharedRegion:
        fd = os.memfd_create(f"rproxyd-{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return cls(name, fd, size, mmap.mmap(fd, size, mmap.MAP_SHARED))
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def adopt(cls, name: str, fd: int, size: int) -> SharedRegion:
        """Map a region handed over by the previous supervisor image."""
        actual = os.fstat(fd).st_size
        if actual != size:
            raise ValueError(f"shared region {name!r}: fd {fd} holds {actual} bytes, expected {size}")
        os.set_inheritable(fd, False)
        return cls(name, fd, size, mmap.mmap(fd, size, mmap.MAP_SHARED))


class SharedMemory:
    """The set of regions one supervisor owns, by name."""

    def __init__(self) -> None:
        self.regions: dict[str, SharedRegion] = {}

    def region(self, name: str, size: int) -> SharedRegion:
        """The region called name, created on first use; its size is fixed for good."""
        region = self.regions.get(name)
        if region is None:
            region = self.regions[name] = SharedRegion.create(name, size)
        elif region.size != size:
            raise ValueError(f"shared region {name!r} is {region.size} bytes, not {size}")
        return region

    def export(self) -> str:
        """Describe the regions for the next image and let their fds survive exec."""
        for region in self.regions.values():
            os.set_inheritable(region.fd, True)
        return json.dumps({r.name: [r.fd, r.size] for r in self.regions.values()})

    @classmethod
    def adopt(cls, described: str) -> SharedMemory:
        shared = cls()
        for name, (fd, size) in json.loads(described).items():
            shared.regions[name] = SharedRegion.adopt(name, fd, size)
        return shared
