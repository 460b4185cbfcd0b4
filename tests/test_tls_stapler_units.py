"""The supervisor's OCSP stapler without a responder: refresh half-way to nextUpdate, back-off on
failure without dropping a valid response, a revoked status withdrawn, the slot layout and
its seqlock as the C callback reads them, and responses the verification refuses."""

from __future__ import annotations

import datetime
import mmap
import struct
from pathlib import Path

import pytest
from cryptography import x509

from appliance.shm import SharedRegion
from appliance.tls import ocsp, stapling
from appliance.tls.stapler import RETRY_FIRST, OcspStapler, _Entry, fingerprint
from tests.support.ocsp import OcspCa


def _stapler() -> OcspStapler:
    size = stapling.REGION_SIZE
    return OcspStapler(SharedRegion("tls-ocsp", -1, size, mmap.mmap(-1, size)))


def _slot(stapler: OcspStapler, slot: int) -> tuple[int, bytes, bytes]:
    """(seq, fingerprint, DER) of a slot, read as ocspstaple.c does."""
    offset = slot * stapling.SLOT_SIZE
    seq, key, length = struct.unpack_from("=Q20sI", stapler.view, offset)
    return seq, key, bytes(stapler.view[offset + 40:offset + 40 + length])


@pytest.fixture
def entry_of(tmp_path: Path) -> tuple[OcspCa, Path, _Entry, bytes]:
    ca = OcspCa(tmp_path)
    chain = ca.issue("unit.test", "http://127.0.0.1:9/")
    source = ocsp.StapledCertificate(str(chain), "", ("listener", 0), ("listener", 0))
    leaf, issuer, url = source.load()
    entry = _Entry(source, leaf, issuer, url, slot=3)
    return ca, chain, entry, fingerprint(leaf)


def test_refresh_half_way_back_off_and_keep_a_valid_response(entry_of: tuple, tmp_path: Path) -> None:
    ca, chain, entry, key = entry_of
    stapler = _stapler()
    stapler.entries[key] = entry
    good = ca.response_file(chain, tmp_path / "good.ocsp").read_bytes()
    now = datetime.datetime.now(datetime.UTC).timestamp()
    stapler._fetched(key, entry, good, "", now)
    # nextUpdate is a day away: the next fetch is half-way there.
    assert entry.due - now == pytest.approx(12 * 3600, abs=120)
    seq, slot_key, der = _slot(stapler, 3)
    assert seq % 2 == 0 and slot_key == key and der == good
    # Failures back off (1 min, then doubling) and keep the valid response stapled.
    stapler._fetched(key, entry, None, "cannot fetch", now)
    assert entry.backoff == RETRY_FIRST and _slot(stapler, 3)[2] == good
    stapler._fetched(key, entry, None, "cannot fetch", now)
    assert entry.backoff == 2 * RETRY_FIRST and _slot(stapler, 3)[2] == good
    # A revoked status is withdrawn at once, however valid the previous response still is.
    revoked = ca.response_file(chain, tmp_path / "revoked.ocsp", good=False).read_bytes()
    stapler._fetched(key, entry, revoked, "", now)
    assert entry.response is None and _slot(stapler, 3)[2] == b""
    assert _slot(stapler, 3)[0] > seq  # every write moved the slot's sequence


def test_verification_refuses_what_a_client_would(entry_of: tuple, tmp_path: Path) -> None:
    ca, chain, entry, _ = entry_of
    (tmp_path / "other").mkdir()
    other = OcspCa(tmp_path / "other")
    other_chain = other.issue("unit.test", None)
    foreign = other.response_file(other_chain, tmp_path / "foreign.ocsp").read_bytes()
    with pytest.raises(ocsp.OcspError, match=r"serial|issuer|signed"):
        ocsp.verify(foreign, entry.leaf, entry.issuer)
    good = ca.response_file(chain, tmp_path / "good.ocsp").read_bytes()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    with pytest.raises(ocsp.OcspError, match="expired"):
        ocsp.verify(good, entry.leaf, entry.issuer, now=later)
    with pytest.raises(ocsp.OcspError, match="not a DER OCSP response"):
        ocsp.verify(b"junk", entry.leaf, entry.issuer)
    assert ocsp.ocsp_url(x509.load_pem_x509_certificates(chain.read_bytes())[0]) == "http://127.0.0.1:9/"
