"""OCSP stapling end to end: a test CA, `openssl ocsp` as the responder, `openssl s_client -status`
as the client. Fetched responses, response files (and their reload), a revoked certificate,
a responder that is down, and the configuration errors of `rproxyd -t`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, wait_for
from tests.support.ocsp import OcspCa, ocsp_responder
from tests.support.tls import s_client_handshake
from tests.support_proc import Rproxyd, config_text, demo_origin

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    with demo_origin() as port:
        yield port


def _stapling_config(tmp_path: Path, origin: int, default: Path, listener_extra: str = "",
                     vhosts: str = "") -> str:
    return config_text(origin, tmp_path / "run", f"""
[listener.tls]
enabled = true
certificate = "{default}"
ocsp_stapling = true
{listener_extra}
{vhosts}""")


def _vhost(name: str, chain: Path, extra: str = "") -> str:
    return f'''
[[vhost]]
name = "{name}"
hosts = ["{name}"]
certificate = "{chain}"
{extra}
[[vhost.route]]
backend = "demo"
'''


def _status(proxy: Rproxyd, sni: str) -> str:
    return s_client_handshake(proxy.address[1], "-status", sni=sni)


def _stapled_good(out: str) -> bool:
    return "OCSP Response Status: successful" in out and "Cert Status: good" in out


def _good_staple(proxy: Rproxyd, sni: str) -> str | None:
    """s_client's output when it got a good stapled response, else None."""
    out = _status(proxy, sni)
    return out if _stapled_good(out) else None


def _this_update(out: str) -> str:
    return out.split("This Update: ")[1].splitlines()[0]


def test_fetched_response_is_stapled_and_a_revoked_one_is_not(tmp_path: Path, origin: int) -> None:
    ca = OcspCa(tmp_path)
    port = free_port()
    good = ca.issue("good.test", f"http://127.0.0.1:{port}")
    revoked = ca.issue("revoked.test", f"http://127.0.0.1:{port}", revoked=True)
    with ocsp_responder(ca, port):
        config = _stapling_config(tmp_path, origin, good, vhosts=_vhost("revoked.test", revoked))
        proxy = Rproxyd(tmp_path, config)
        try:
            out = wait_for(lambda: _good_staple(proxy, "good.test"), 20, "a stapled good response")
            assert "This Update:" in out and "Next Update:" in out
            wait_for(lambda: "certificate revoked" in proxy.log(), 20, "the revocation logged")
            out = _status(proxy, "revoked.test")
            assert "OCSP response: no response sent" in out and "Cipher is" in out, out
            # Without -status the client asks for nothing and gets nothing.
            assert "OCSP response" not in s_client_handshake(proxy.address[1], sni="good.test")
        finally:
            proxy.stop()
    assert "Traceback" not in proxy.log(), proxy.log()


def test_responder_down_means_no_staple_and_a_working_handshake(tmp_path: Path, origin: int) -> None:
    ca = OcspCa(tmp_path)
    chain = ca.issue("down.test", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    proxy = Rproxyd(tmp_path, _stapling_config(tmp_path, origin, chain))
    try:
        wait_for(lambda: "cannot fetch from http://127.0.0.1" in proxy.log(), 20, "the failed fetch logged")
        out = _status(proxy, "down.test")
        assert "OCSP response: no response sent" in out and "Cipher is" in out, out
        assert "retrying in 60s" in proxy.log()
    finally:
        proxy.stop()


def test_response_file_is_stapled_and_reread_on_reload(tmp_path: Path, origin: int) -> None:
    ca = OcspCa(tmp_path)
    chain = ca.issue("file.test", None)  # no OCSP URL: the file is the only source
    response = ca.response_file(chain, tmp_path / "file.test.ocsp")
    proxy = Rproxyd(tmp_path, _stapling_config(tmp_path, origin, chain,
                                               f'ocsp_stapling_file = "{response}"'))
    try:
        first = _this_update(_good_staple(proxy, "file.test") or "")
        # A newer response in the same file is stapled after a reload.
        ca.response_file(chain, response, age=10)
        assert proxy.reload().returncode == 0
        wait_for(lambda: (out := _good_staple(proxy, "file.test")) and _this_update(out) != first, 20,
                 "the new response stapled")
    finally:
        proxy.stop()


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", "-t", "-c", str(config)],
                          capture_output=True, text=True, timeout=30)


def test_stapling_configuration_errors_name_file_and_key(tmp_path: Path, origin: int) -> None:
    ca = OcspCa(tmp_path)
    plain = ca.issue("plain.test", None)
    revoked = ca.issue("gone.test", None)
    revoked_file = ca.response_file(revoked, tmp_path / "gone.ocsp", good=False)
    config = tmp_path / "rproxy.toml"
    cases = {
        "": ("listener[0].tls.certificate[0]", f"{plain} has no http:// OCSP URL"),
        f'ocsp_stapling_file = "{tmp_path}/missing.ocsp"':
            ("listener[0].tls.ocsp_stapling_file[0]", f"cannot read OCSP response {tmp_path}/missing.ocsp"),
    }
    for extra, (key, message) in cases.items():
        config.write_text(_stapling_config(tmp_path, origin, plain, extra))
        result = _check(config)
        assert result.returncode == 1, result.stderr
        assert f"{key}: " in result.stderr and message in result.stderr, result.stderr
    config.write_text(_stapling_config(tmp_path, origin, revoked, f'ocsp_stapling_file = "{revoked_file}"'))
    result = _check(config)
    assert result.returncode == 1 and "listener[0].tls.ocsp_stapling_file[0]: " in result.stderr
    assert "certificate revoked" in result.stderr, result.stderr
