"""Worker heartbeats and readiness, in a shared-memory array of cells.

Each live worker owns one cell: a CLOCK_MONOTONIC stamp (system-wide, so the
supervisor can compare it with its own clock) and the worker's phase. The worker
writes; the supervisor only reads. A blocked event loop stops the stamps, which
is what the supervisor's murder check looks for. Cells are handed out by the
supervisor, not by slot, because an old and a new worker of the same slot live
side by side during a reload.
"""

from __future__ import annotations

import asyncio
import struct
import time

from appliance.shm import SharedRegion

CELLS = 1024  # 3 x the 256-worker maximum: old, new and a replacement for every slot
_CELL = struct.Struct("=dI4x")  # stamp (monotonic seconds), phase, padding to 16 bytes
REGION_SIZE = CELLS * _CELL.size

# Phases a worker reports.
BOOTING = 0
ACCEPTING = 1
DRAINING = 2


class HeartbeatBoard:
    """The supervisor's view of every cell, and the allocator of free cells."""

    def __init__(self, region: SharedRegion) -> None:
        self._view = region.view
        self._free = list(range(CELLS - 1, -1, -1))

    def allocate(self) -> int:
        cell = self._free.pop()
        _CELL.pack_into(self._view, cell * _CELL.size, time.monotonic(), BOOTING)
        return cell

    def claim(self, cell: int) -> None:
        """Mark a cell as used by a worker adopted across an upgrade."""
        self._free.remove(cell)

    def release(self, cell: int) -> None:
        self._free.append(cell)

    def read(self, cell: int) -> tuple[float, int]:
        """(last stamp, phase) of a cell."""
        return _CELL.unpack_from(self._view, cell * _CELL.size)


class HeartbeatCell:
    """The worker's side: stamps its cell from a loop timer."""

    def __init__(self, region: SharedRegion, cell: int, interval: float) -> None:
        self._view = region.view
        self._offset = cell * _CELL.size
        self._interval = interval
        self._phase = BOOTING
        self._timer: asyncio.TimerHandle | None = None

    def set_phase(self, phase: int) -> None:
        self._phase = phase
        self._stamp()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tick(loop)

    def _stamp(self) -> None:
        _CELL.pack_into(self._view, self._offset, time.monotonic(), self._phase)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stamp()
        self._timer = loop.call_later(self._interval, self._tick, loop)
