"""Session resumption through the shared ticket-key ring: TLS 1.2 and 1.3, each across workers,
after a worker respawn, a reload, an in-place upgrade, key rotation and key files.

Both openssl s_client (-sess_out / -sess_in; -reconnect never resumes TLS 1.3) and
Python's ssl module are used as clients. Two workers share the listener (SO_REUSEPORT), so
a run of resumptions lands on both; a respawn, a reload and an upgrade replace every
worker, so a resumption after them proves the keys outlive the processes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import wait_for
from tests.support.tls import Certs, client_context, https_get, s_client
from tests.support_proc import Rproxyd, config_text, demo_origin

pytestmark = pytest.mark.timeout(120)
RESUMPTIONS = 8


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    with demo_origin() as port:
        yield port


def _start(tmp_path: Path, certs: Certs, origin: int, tls: str = "", callback: str = "C") -> Rproxyd:
    """A proxy of two workers; `callback` "ctypes" forces the ticket callback's Python fallback."""
    extra = f"""
[listener.tls]
enabled = true
certificate = "{certs.dir}/a.test.pem"

[tls]
{tls}
"""
    env = {"RPROXYD_TICKET_CALLBACK": "python"} if callback == "ctypes" else {}
    proxy = Rproxyd(tmp_path, config_text(origin, tmp_path / "run", extra, process="workers = 2"), env)
    # `make` builds the C callback; the fallback is only taken when asked for.
    wait_for(lambda: proxy.log().count(f"session-ticket callback: {callback} (") == 2, 5,
             f"both workers on the {callback} ticket callback")
    return proxy


class Resumer:
    """Keeps one Python session and one s_client session file and resumes both."""

    def __init__(self, port: int, certs: Certs, version: str, directory: Path) -> None:
        self.port, self.certs, self.version = port, certs, version
        self.session_file = directory / f"session-{version}.pem"
        self.ctx = client_context(certs, version=version)  # a session belongs to its context
        self.session = https_get(port, "a.test", self.ctx).session
        resumed, _ = s_client(port, version, "a.test", sess_out=self.session_file)
        assert not resumed and self.session_file.stat().st_size > 0

    def resume_python(self) -> bool:
        reply = https_get(self.port, "a.test", self.ctx, session=self.session)
        assert reply.status == 200
        if reply.session is not None:
            self.session = reply.session
        return reply.reused

    def resume_s_client(self) -> bool:
        fresh = self.session_file.with_suffix(".new")
        fresh.unlink(missing_ok=True)
        resumed, out = s_client(self.port, self.version, "a.test", sess_in=self.session_file, sess_out=fresh)
        assert "HTTP/1.1 200" in out
        if self.version == "1.3" and resumed:
            # A TLS 1.3 resumption must bring a fresh ticket (clients use each ticket once).
            assert fresh.exists() and fresh.read_bytes() != self.session_file.read_bytes()
        if fresh.exists():
            fresh.replace(self.session_file)
        return resumed

    def all_resume(self, count: int = 1) -> None:
        for _ in range(count):
            assert self.resume_python(), "the Python client's session was not resumed"
            assert self.resume_s_client(), "s_client's session was not resumed"


@pytest.mark.parametrize("callback", ["C", "ctypes"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_resumption_across_workers_respawn_reload_and_upgrade(
        tmp_path: Path, certs: Certs, origin: int, version: str, callback: str) -> None:
    proxy = _start(tmp_path, certs, origin, callback=callback)
    try:
        client = Resumer(proxy.address[1], certs, version, tmp_path)
        client.all_resume(RESUMPTIONS)  # spread over both workers

        old = {w["pid"] for w in proxy.current_workers()}
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(proxy.current_workers()) == 2 and all(
            w["pid"] not in old and w["state"] == "accepting" for w in proxy.current_workers()),
            10, "both slots respawned")
        client.all_resume(2)

        assert proxy.reload().returncode == 0
        client.all_resume(2)

        generation = proxy.status()["generation"]
        proxy.send(signal.SIGUSR2)
        wait_for(lambda: "upgraded in place" in proxy.log(), 15, "the re-exec")
        proxy.wait_running(generation=generation + 1)
        client.all_resume(2)
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.log()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_rotation_keeps_older_keys_for_decryption(
        tmp_path: Path, certs: Certs, origin: int, version: str) -> None:
    # Rotation every second, tickets valid 3 s: 4 keys in the ring.
    proxy = _start(tmp_path, certs, origin, 'ticket_rotation = "1s"\nticket_lifetime = "3s"')
    try:
        port = proxy.address[1]
        ctx = client_context(certs, version=version)
        session = https_get(port, "a.test", ctx).session
        wait_for(lambda: proxy.log().count("ticket keys rotated") >= 2, 5, "two rotations")
        reply = https_get(port, "a.test", ctx, session=session)
        assert reply.reused, "a ticket of a rotated-out (but kept) key must still resume"
        wait_for(lambda: proxy.log().count("ticket keys rotated") >= 6, 8, "the key to leave the ring")
        assert not https_get(port, "a.test", ctx, session=session).reused
    finally:
        proxy.stop()


def _key_file(path: Path) -> Path:
    path.write_bytes(os.urandom(80))  # nginx's format: name | HMAC key | AES key
    return path


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_key_files_rotate_by_replacement_and_hup(
        tmp_path: Path, certs: Certs, origin: int, version: str) -> None:
    old = _key_file(tmp_path / "ticket-old.key")
    proxy = _start(tmp_path, certs, origin, f'ticket_key_files = ["{old}"]')
    try:
        port = proxy.address[1]
        ctx = client_context(certs, version=version)
        first = https_get(port, "a.test", ctx).session
        new = _key_file(tmp_path / "ticket-new.key")
        text = proxy.config_path.read_text()
        proxy.config_path.write_text(text.replace(f'["{old}"]', f'["{new}", "{old}"]'))
        assert proxy.reload().returncode == 0
        reply = https_get(port, "a.test", ctx, session=first)
        assert reply.reused, "the previous key still decrypts after the new one was added"
        second = reply.session
        proxy.config_path.write_text(text.replace(f'["{old}"]', f'["{new}"]'))
        assert proxy.reload().returncode == 0
        assert https_get(port, "a.test", ctx, session=second).reused, "a ticket of the new key resumes"
        assert not https_get(port, "a.test", ctx, session=first).reused, "the retired key is gone"
    finally:
        proxy.stop()


def test_handshake_metrics_count_full_and_resumed(tmp_path: Path, certs: Certs, origin: int) -> None:
    extra = f"""
[listener.tls]
enabled = true
certificate = "{certs.dir}/a.test.pem"

[admin]
enabled = true
bind = "127.0.0.1:0"
"""
    proxy = Rproxyd(tmp_path, config_text(origin, tmp_path / "run", extra, process="workers = 2"))
    try:
        client = Resumer(proxy.address[1], certs, "1.3", tmp_path)  # two full handshakes
        client.all_resume(3)  # six resumed ones

        def counts() -> dict[str, float]:
            text = httpx.get(f"http://{proxy.status()['admin']}/metrics", timeout=5).text
            found = {}
            for line in text.splitlines():
                if line.startswith("rproxyd_tls_handshakes_total{"):
                    found["resumed" if 'resumed="true"' in line else "full"] = float(line.rsplit(" ", 1)[1])
            return found

        # Workers publish their counters every 0.5 s.
        wait_for(lambda: counts() == {"full": 2, "resumed": 6}, 5, f"handshake counts {counts()}")
    finally:
        proxy.stop()
