"""The compiled and the pure-Python build (appliance/build.py): `rproxyd --version` says which
runs, both proxy requests, RPROXYD_PURE=1 keeps every extension module out of a worker, and a
missing, stale or broken extension falls back to the module's source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from appliance import __version__, build
from tests.support import RPROXYD
from tests.support_proc import GREETING, Rproxyd, config_text, demo_origin, get

PACKAGE = build.PACKAGE
INFO = (json.loads((PACKAGE / build.INFO_NAME).read_text()) if (PACKAGE / build.INFO_NAME).exists()
        else {"cython": "", "modules": {}})
BUILT = INFO["modules"]
COMPILED = f"compiled with Cython {INFO['cython']} ({len(BUILT)} modules)"
# A build choice for the child processes: "0" is the compiled build even if the test runs pure.
ENV = {"compiled": {build.PURE_ENV: "0"}, "pure": {build.PURE_ENV: "1"}}


def extensions_mapped(pid: int) -> set[str]:
    """The appliance extension modules a process has loaded (the C ticket callback is none)."""
    maps = Path(f"/proc/{pid}/maps").read_text().split("\n")
    return {line.rsplit("/", 1)[1].split(".")[0] for line in maps
            if str(PACKAGE) in line and ".cpython-" in line}


@pytest.mark.parametrize("which", ["compiled", "pure"])
def test_each_build_says_so_and_proxies(tmp_path: Path, which: str) -> None:
    env = {**os.environ, **ENV[which]}
    version = subprocess.run([RPROXYD, "--version"], capture_output=True, text=True, env=env,
                             timeout=30, check=True).stdout.splitlines()[0]
    expected = {"compiled": COMPILED, "pure": "pure Python (RPROXYD_PURE=1)"}[which]
    assert BUILT, "no compiled build: run make"
    assert version == f"rproxyd {__version__}, {expected}"
    with demo_origin() as origin_port:
        config = config_text(origin_port, tmp_path / "run", process="workers = 1",
                             extra='[admin]\nenabled = true\nbind = "127.0.0.1:0"\n')
        proxy = Rproxyd(tmp_path, config, env=ENV[which])
        try:
            status, _, body = get(proxy.address)
            assert (status, body) == (200, GREETING)
            admin = httpx.get(f"http://{proxy.status()['admin']}/status", timeout=5).json()
            assert admin["build"] == expected
            (worker,) = proxy.current_workers()
            loaded = extensions_mapped(worker["pid"])
        finally:
            assert proxy.stop() == 0
    # The C bindings both builds load: HTTP/2 (appliance/h2/session.pyx) and TCP_CORK
    # (appliance/http/cork.pyx).
    request_path = {name.rsplit(".", 1)[1] for name in BUILT} if which == "compiled" else set()
    assert loaded == request_path | {"session", "cork"}


def _describe(tree: Path) -> str:
    """What --version says of the package copied to `tree`, and where headers.py came from."""
    return _run_in(tree, "from appliance import build; import appliance.http.headers as h; "
                         "print(build.describe(load=True)); print(h.__file__)")


def _run_in(tree: Path, code: str) -> str:
    """The output of `code` run by a Python that imports the package copied to `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1", build.PURE_ENV: "0"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tree, timeout=30, check=True).stdout


def test_a_broken_stale_or_missing_extension_runs_the_source(tmp_path: Path) -> None:
    assert "appliance.http.headers" in BUILT, "no compiled build of appliance/http/headers.py: run make"
    tree = tmp_path / "tree"
    shutil.copytree(PACKAGE, tree / "appliance", ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    headers = tree / "appliance/http/headers.py"
    extension = headers.with_name(BUILT["appliance.http.headers"]["extension"])
    assert _describe(tree).split("\n")[:2] == [COMPILED, str(extension)]

    intact = extension.read_bytes()
    extension.write_bytes(b"not an ELF file")
    out = _describe(tree).split("\n")
    assert out[0].startswith(f"{COMPILED.split(' (')[0]}, but from source after failing to import: "
                             "appliance.http.headers: ")
    assert out[1] == str(headers)
    # The compiled modules that cimport from it run from source too, and the request path works.
    assert "; appliance.http.downstream: " in out[0]
    assert _run_in(tree, "import appliance.http.downstream as d; print(d.__file__)").strip() == str(
        tree / "appliance/http/downstream.py")

    extension.write_bytes(intact)
    headers.write_text(headers.read_text() + "\n# changed\n")
    assert _describe(tree).split("\n")[:2] == [
        "pure Python (appliance/http/headers.py changed since the build; run make)", str(headers)]

    extension.unlink()
    assert _describe(tree).startswith(f"pure Python (no extension module {extension.name} for this Python)")

    (tree / "appliance" / build.INFO_NAME).unlink()
    assert _describe(tree).startswith("pure Python (not built; run make)")


def test_a_broken_extension_whose_types_others_cimport_takes_them_to_source(tmp_path: Path) -> None:
    # Exchange is cimported as a type by the client and backend sides: with exchange.py from
    # source, each of them runs from source too, never compiled against a class from source.
    tree = tmp_path / "tree"
    shutil.copytree(PACKAGE, tree / "appliance", ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    (tree / "appliance/http" / BUILT["appliance.http.exchange"]["extension"]).write_bytes(b"not an ELF file")
    out = _run_in(tree, "from appliance import build; "
                        "import appliance.http.downstream as d, appliance.upstream.connection as c; "
                        "print(build.describe(load=True)); print(d.__file__); print(c.__file__)").split("\n")
    source = tree / "appliance"
    assert out[1:3] == [str(source / "http/downstream.py"), str(source / "upstream/connection.py")]
    assert "appliance.http.exchange: " in out[0] and "appliance.upstream.pool: " in out[0]


def test_version_piped_to_a_reader_of_one_line_exits_quietly() -> None:
    """`rproxyd --version | head -1`: the reader closes the pipe after the first line."""
    result = subprocess.run(f"{RPROXYD} --version | head -c 1 >/dev/null; exit ${{PIPESTATUS[0]}}",
                            shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr
