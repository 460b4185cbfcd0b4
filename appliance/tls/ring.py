"""The ticket-key ring: session-ticket keys in shared memory, written by the supervisor.

The supervisor maps the region before the first fork and keeps it across reloads and
the in-place upgrade (appliance/shm.py), so every worker of every generation reads the
same keys: a ticket issued by one worker resumes on any other, after a respawn, a
reload or an upgrade. Slot 0 holds the newest key, which encrypts; every slot decrypts.

Layout: a header (sequence counter, magic, key count, time of the last rotation on
CLOCK_MONOTONIC, which is system-wide and survives exec), then MAX_KEYS slots of
name(16) | hmac length | aes length | hmac(32) | aes(32). The sequence counter is a
seqlock: the writer makes it odd, writes, makes it even; a reader retries while it
is odd or changed under it, for READ_PATIENCE at most. There is one writer (the
supervisor loop); one that died mid-write leaves the counter odd, and readers then
see no keys (full handshakes, no tickets) until the next write repairs the ring.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
import time

from appliance.config.schema import TlsConfig
from appliance.shm import SharedRegion
from appliance.tls.keyfiles import TicketKey, read_key_files

log = logging.getLogger("rproxyd.tls")

REGION_NAME = "tls-tickets"
MAX_KEYS = 64
_MAGIC = 0x524B5431  # "RKT1"
_HEADER = struct.Struct("=QIId8x")  # seq, magic, count, rotated_at
_SLOT = struct.Struct("=16sBB6x32s32s")
REGION_SIZE = _HEADER.size + MAX_KEYS * _SLOT.size
_MADV_DONTDUMP = 16
# How long a reader waits for a write in progress. A write takes microseconds; a reader
# still blocked after this is most likely looking at a writer that died mid-write.
READ_PATIENCE = 0.05


def ring_depth(config: TlsConfig) -> int:
    """Keys kept: every ticket still within its lifetime must find its key (lifetime/interval + 1)."""
    return math.ceil(config.ticket_lifetime / config.ticket_rotation) + 1


def random_key() -> TicketKey:
    return TicketKey(os.urandom(16), hmac=os.urandom(32), aes=os.urandom(32))


class TicketRing:
    """Reads and writes the key ring in one shared region."""

    def __init__(self, region: SharedRegion) -> None:
        self.view = region.view
        self.torn_reported = False
        # Secrets have no business in a core dump.
        if hasattr(self.view, "madvise"):
            try:
                self.view.madvise(_MADV_DONTDUMP)
            except OSError:
                log.debug("MADV_DONTDUMP refused for the ticket-key ring")

    def seq(self) -> int:
        return struct.unpack_from("=Q", self.view, 0)[0]

    def read(self) -> tuple[int, list[TicketKey], float]:
        """(sequence, keys newest first, last rotation time); empty until the supervisor wrote.

        Empty too when no consistent copy could be read within READ_PATIENCE: the
        sequence returned is the one seen, so a worker's ticket callback does not read
        again until the ring changes.
        """
        deadline = time.monotonic() + READ_PATIENCE
        while True:
            seq = self.seq()
            if not seq & 1:
                keys, rotated_at = self._unpack()
                if self.seq() == seq:
                    return seq, keys, rotated_at
            if time.monotonic() > deadline:
                self._report_torn(seq)
                return seq, [], 0.0
            os.sched_yield()  # let a writer on this CPU finish

    def _unpack(self) -> tuple[list[TicketKey], float]:
        _, magic, count, rotated_at = _HEADER.unpack_from(self.view, 0)
        keys = []
        if magic == _MAGIC:
            for index in range(min(count, MAX_KEYS)):
                name, hlen, alen, hmac, aes = _SLOT.unpack_from(self.view, _HEADER.size + index * _SLOT.size)
                keys.append(TicketKey(name, hmac=hmac[:hlen], aes=aes[:alen]))
        return keys, rotated_at

    def _report_torn(self, seq: int) -> None:
        if not self.torn_reported:
            self.torn_reported = True
            log.error("ticket-key ring unreadable for %gs (sequence %d): its writer seems to have died "
                      "mid-write; no session tickets until the ring is written again", READ_PATIENCE, seq)

    def write(self, keys: list[TicketKey], rotated_at: float) -> None:
        view = self.view
        keys = keys[:MAX_KEYS]
        # Odd while writing. Already odd: a previous writer died mid-write; step over it.
        writing = (self.seq() + 1) | 1
        struct.pack_into("=Q", view, 0, writing)
        for index, key in enumerate(keys):
            _SLOT.pack_into(view, _HEADER.size + index * _SLOT.size,
                            key.name, len(key.hmac), len(key.aes), key.hmac, key.aes)
        _HEADER.pack_into(view, 0, writing, _MAGIC, len(keys), rotated_at)
        struct.pack_into("=Q", view, 0, writing + 1)


class TicketRotation:
    """The supervisor's side: fills the ring and rotates it on the configured interval.

    With `ticket_key_files` the files are the keys (no rotation here: an operator or a
    fleet tool replaces the files and sends HUP). Otherwise random keys, a new one every
    `ticket_rotation`, `ring_depth` of them kept.
    """

    def __init__(self, region: SharedRegion) -> None:
        self.ring = TicketRing(region)
        self.config: TlsConfig | None = None

    def configure(self, config: TlsConfig, adopted: bool = False) -> None:
        """Apply a (new) generation's [tls] table; raise ValueError on unreadable key files.

        On first start the ring is filled; after an upgrade (`adopted`) or a reload with
        the same random-key settings, the keys in the ring are kept.
        """
        previous, self.config = self.config, config
        _, keys, rotated_at = self.ring.read()
        if config.ticket_key_files:
            files = read_key_files(config.ticket_key_files)
            self.ring.write(files, time.monotonic())
            log.info("ticket keys: %d from files, encrypting with %s", len(files), files[0].name.hex())
        elif not keys or (not adopted and previous is not None and previous.ticket_key_files):
            self.ring.write([random_key()], time.monotonic())
            log.info("ticket keys: random, rotated every %gs, %d kept", config.ticket_rotation,
                     ring_depth(config))
        else:
            self.ring.write(keys[:ring_depth(config)], rotated_at)

    def tick(self, now: float) -> None:
        """Rotate when the interval has passed (called every supervisor loop turn)."""
        config = self.config
        if config is None or config.ticket_key_files:
            return
        _, keys, rotated_at = self.ring.read()
        if now - rotated_at < config.ticket_rotation:
            return
        self.ring.write([random_key(), *keys][:ring_depth(config)], now)
        log.info("ticket keys rotated (%d kept)", min(len(keys) + 1, ring_depth(config)))


def private_region() -> SharedRegion:
    """A ring for a worker run without a supervisor (its keys are its own)."""
    return SharedRegion("tls-tickets", -1, REGION_SIZE, mmap.mmap(-1, REGION_SIZE))
