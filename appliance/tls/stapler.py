"""The supervisor's side of OCSP stapling: get, verify, refresh and publish each response.

For every certificate a listener with `ocsp_stapling` serves, the supervisor keeps one
verified response in a slot of a shared-memory region (layout in ocspstaple.c), which
every worker of every generation reads in its status callback (stapling.py):

- From `ocsp_stapling_file`: read and verified at start and on every reload (HUP), as
  nginx's ssl_stapling_file.
- Otherwise fetched from the certificate's OCSP URL in a background thread (the
  supervisor loop never waits on the network), verified, and fetched again half-way to
  its nextUpdate (hourly without one). A failed fetch is retried with back-off (1 min,
  doubling up to 1 h); the response in place is kept as long as it is valid, and
  withdrawn once its nextUpdate has passed. A revoked or unknown status is never
  stapled (logged, retried like a failure).

Why shared memory: a refresh must reach running workers without a restart, and a
reload or an upgrade must not lose what was fetched. The region is created before the
first fork and kept for the supervisor's life like the ticket ring (appliance/shm.py);
its size is fixed for good, hence SLOTS x SLOT_SIZE. Slots are found by certificate
fingerprint, so they are reassigned freely as reloads change the certificates.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.config.schema import Config
from appliance.shm import SharedRegion
from appliance.tls import ocsp
from appliance.tls.stapling import SLOT_SIZE, SLOTS

log = logging.getLogger("rproxyd.tls")

_HEADER = struct.Struct("=Q20sI8x")  # seq, fingerprint, length, reserved (ocspstaple.c)
RETRY_FIRST = 60.0
RETRY_MAX = 3600.0
REFRESH_WITHOUT_NEXT_UPDATE = 3600.0
REFRESH_MIN = 60.0


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-1 of the DER certificate: what the C callback computes (OpenSSL caches it per X509)."""
    return hashlib.sha1(cert.public_bytes(Encoding.DER)).digest()


@dataclass(slots=True, eq=False)
class _Entry:
    """One stapled certificate's state in the supervisor."""

    source: ocsp.StapledCertificate
    leaf: x509.Certificate
    issuer: x509.Certificate
    url: str
    slot: int = -1
    response: ocsp.Verified | None = None
    due: float = 0.0  # wall-clock time of the next fetch
    backoff: float = 0.0


class OcspStapler:
    """Keeps the region's slots in step with the configuration and the responders."""

    def __init__(self, region: SharedRegion) -> None:
        self.view = region.view
        self.entries: dict[bytes, _Entry] = {}
        self.results: list[tuple[bytes, bytes | None, str]] = []  # appended by the fetch thread
        self.thread: threading.Thread | None = None

    def configure(self, config: Config) -> None:
        """Apply a (new) generation's certificates; files are read again, fetched responses kept."""
        entries: dict[bytes, _Entry] = {}
        for source in ocsp.stapled_certificates(config):
            try:
                leaf, issuer, url = source.load()
            except ocsp.OcspError as exc:  # checked at load; the file may have changed since
                log.error("OCSP stapling: %s", exc)
                continue
            key = fingerprint(leaf)
            entry = self.entries.get(key)
            if entry is None or entry.source.file != source.file:
                entry = _Entry(source, leaf, issuer, url)
            entry.source, entry.url = source, url
            entries[key] = entry
        used = {entry.slot for entry in entries.values()}
        for key, entry in self.entries.items():
            if key not in entries and entry.slot >= 0:
                self._write(entry.slot, b"", b"")  # a certificate no longer served
        self.entries = entries
        free = (slot for slot in range(SLOTS) if slot not in used)
        for key, entry in entries.items():
            if entry.slot < 0:
                entry.slot = next(free, -1)
                if entry.slot < 0:
                    log.error("OCSP stapling: more than %d certificates; %s not stapled", SLOTS,
                              entry.source.chain)
                    continue
            if entry.source.file:
                self._load_file(key, entry)
            else:
                self._publish(key, entry)

    def _load_file(self, key: bytes, entry: _Entry) -> None:
        try:
            der = Path(entry.source.file).read_bytes()
            entry.response = ocsp.verify(der, entry.leaf, entry.issuer)
        except (OSError, ocsp.OcspError) as exc:
            entry.response = None
            log.error("OCSP stapling: %s: not stapled: %s: %s", entry.source.chain, entry.source.file, exc)
        else:
            log.info("OCSP stapling: %s: response from %s, %s", entry.source.chain, entry.source.file,
                     _window(entry.response))
        self._publish(key, entry)

    def tick(self, now: float) -> None:
        """Apply finished fetches, withdraw expired responses, start due fetches (every loop turn)."""
        wall = time.time()
        while self.results:
            key, der, error = self.results.pop(0)
            entry = self.entries.get(key)
            if entry is not None:
                self._fetched(key, entry, der, error, wall)
        utc = datetime.datetime.fromtimestamp(wall, datetime.UTC)
        for key, entry in self.entries.items():
            response = entry.response
            if response is not None and response.next_update is not None and response.next_update <= utc:
                log.error("OCSP stapling: %s: response expired (nextUpdate %s); no staple until a new one",
                          entry.source.chain, f"{response.next_update:%Y-%m-%d %H:%M:%S} UTC")
                entry.response = None
                self._publish(key, entry)
        if self.thread is not None and self.thread.is_alive():
            return
        jobs = [(key, entry.url, ocsp.request_for(entry.leaf, entry.issuer))
                for key, entry in self.entries.items()
                if not entry.source.file and entry.url and entry.slot >= 0 and entry.due <= wall]
        if jobs:
            for key, _, _ in jobs:
                self.entries[key].due = float("inf")  # until its result is applied
            self.thread = threading.Thread(target=self._fetch_all, args=(jobs,), name="ocsp-fetch",
                                           daemon=True)
            self.thread.start()

    def _fetch_all(self, jobs: list[tuple[bytes, str, bytes]]) -> None:
        """In the fetch thread: network only; the loop applies each result (no shared state here)."""
        for key, url, request in jobs:
            try:
                self.results.append((key, ocsp.fetch(url, request), ""))
            except Exception as exc:  # any failure (HTTP, socket, URL) is a result to log and retry
                self.results.append((key, None, f"cannot fetch from {url}: {exc}"))

    def _fetched(self, key: bytes, entry: _Entry, der: bytes | None, error: str, wall: float) -> None:
        if der is not None:
            try:
                response = ocsp.verify(der, entry.leaf, entry.issuer)
            except ocsp.OcspError as exc:
                error = f"response from {entry.url} refused: {exc}"
                if isinstance(exc, ocsp.BadStatus):
                    entry.response = None  # never staple a revoked certificate's last good response
            else:
                entry.response, entry.backoff = response, 0.0
                next_update = response.next_update.timestamp() if response.next_update else None
                entry.due = wall + (max(REFRESH_MIN, (next_update - wall) / 2) if next_update
                                    else REFRESH_WITHOUT_NEXT_UPDATE)
                log.info("OCSP stapling: %s: %s, next fetch in %ds", entry.source.chain, _window(response),
                         entry.due - wall)
                self._publish(key, entry)
                return
        entry.backoff = min(RETRY_MAX, entry.backoff * 2 if entry.backoff else RETRY_FIRST)
        entry.due = wall + entry.backoff
        keeping = "keeping the current response" if entry.response is not None else "not stapled"
        log.error("OCSP stapling: %s: %s; %s, retrying in %ds", entry.source.chain, error, keeping,
                  entry.backoff)
        self._publish(key, entry)

    def _publish(self, key: bytes, entry: _Entry) -> None:
        der = entry.response.der if entry.response is not None else b""
        if len(der) > SLOT_SIZE - _HEADER.size:
            log.error("OCSP stapling: %s: response of %d bytes does not fit a slot (%d); not stapled",
                      entry.source.chain, len(der), SLOT_SIZE - _HEADER.size)
            der = b""
        if entry.slot >= 0:
            self._write(entry.slot, key, der)

    def _write(self, slot: int, key: bytes, der: bytes) -> None:
        """One slot, under its seqlock: odd while writing (the only writer is this loop)."""
        offset = slot * SLOT_SIZE
        writing = (struct.unpack_from("=Q", self.view, offset)[0] + 1) | 1
        struct.pack_into("=Q", self.view, offset, writing)
        _HEADER.pack_into(self.view, offset, writing, key, len(der))
        self.view[offset + _HEADER.size:offset + _HEADER.size + len(der)] = der
        struct.pack_into("=Q", self.view, offset, writing + 1)


def _window(response: ocsp.Verified) -> str:
    until = f"{response.next_update:%Y-%m-%d %H:%M:%S} UTC" if response.next_update else "no nextUpdate"
    return f"status good, valid until {until}"
