"""Bodies stream with bounded memory: 1 GiB each way through one worker."""

from __future__ import annotations

import subprocess
import threading
import time

import httpx
import pytest

from tests.support import curl

GIB = 1024**3
# Generous against the watermarks (256 KiB per direction) but far below a buffered GiB.
RSS_GROWTH_LIMIT_KIB = 64 * 1024


@pytest.fixture
def proxy(make_proxy, origin):
    return make_proxy(backends={"demo": [origin.address]})


class RssSampler:
    """Samples the proxy's resident memory while a transfer runs."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.baseline = proxy.rss_kib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proxy.rss_kib())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.baseline


def test_one_gib_download_streams_with_bounded_memory(proxy):
    sampler = RssSampler(proxy)
    result = curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                  f"{proxy.url}/bytes/{GIB}", timeout=120)
    growth = sampler.stop()
    assert result.stdout == f"200 {GIB}".encode(), result.stderr
    assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth} KiB"


def test_one_gib_upload_streams_with_bounded_memory(proxy, tmp_path):
    source = tmp_path / "sparse.bin"
    subprocess.run(["truncate", "-s", str(GIB), str(source)], check=True)
    sampler = RssSampler(proxy)
    result = curl("-H", "Expect:", "-T", str(source), f"{proxy.url}/sink", timeout=120)
    growth = sampler.stop()
    assert result.stdout == f"{GIB}\n".encode(), result.stderr
    assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth} KiB"


def test_chunked_upload_to_slow_reader_pauses_the_client(proxy):
    """A backend that reads slowly must hold the client back, not fill the proxy's memory."""
    sampler = RssSampler(proxy)

    def body():
        block = b"z" * (1024 * 1024)
        for _ in range(256):
            yield block

    started = time.monotonic()
    response = httpx.post(f"{proxy.url}/sink", content=body(), timeout=120)
    growth = sampler.stop()
    assert response.status_code == 200 and response.text == f"{256 * 1024 * 1024}\n"
    assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth} KiB"
    assert time.monotonic() - started < 120
