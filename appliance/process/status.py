"""status.json in the runtime directory, and the `rproxyd --reload` helper that reads it.

systemd 252 has no Type=notify-reload, and `ExecReload=kill -HUP` lets
`systemctl reload` return before the reload is done (measured: 4 of 40). The
helper instead sends SIGHUP and waits until the supervisor publishes the outcome
of a reload attempt that began after the signal arrived (0 of 40 early).

Counters: `requested` counts SIGHUPs the supervisor has taken off its queue;
each finished attempt publishes `covers`, the value `requested` had when the
attempt read the configuration. An attempt with covers > the value read before
sending the signal therefore read the configuration after the signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import tomllib
from pathlib import Path
from typing import Any

from appliance.config.loader import config_files
from appliance.config.paths import DEFAULT_RUNTIME_DIR, runtime_dir

STATUS_FILE = "status.json"


def _configured_dir(config_path: Path) -> str:
    """process.runtime_dir as written in the files, read leniently: the reload helper
    must find the running supervisor even when the new configuration is invalid."""
    found = ""
    for source in config_files(config_path):
        with contextlib.suppress(OSError, ValueError):
            value = tomllib.loads(source.read_text()).get("process", {}).get("runtime_dir")
            if isinstance(value, str):
                found = value
    return found


class NoSupervisor(Exception):
    """`rproxyd --reload PID` cannot find (or signal) that supervisor: nothing was sent."""


def _where(config_path: Path) -> list[tuple[Path, str]]:
    """The directories a supervisor started with `config_path` may publish in, each with why."""
    places = []
    configured = _configured_dir(config_path)
    if configured:
        places.append((Path(configured), f"[process] runtime_dir of {config_path}"))
    places.append((runtime_dir(None), f"the default: $RUNTIME_DIRECTORY, else {DEFAULT_RUNTIME_DIR}"))
    return places


def _describe(directory: Path) -> str:
    try:
        found = json.loads((directory / STATUS_FILE).read_text())
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    except ValueError:
        return "not JSON"
    return f"it is rproxyd {found.get('pid')}'s"


def locate(pid: int, config_path: Path) -> tuple[Path, dict[str, Any]]:
    """The runtime directory and status of supervisor `pid`; raise NoSupervisor saying why not.

    The directory is [process] runtime_dir of the file the supervisor was started with,
    which is why `--reload` reads `-c FILE` (leniently: the file may be broken now).
    """
    if not _alive(pid):
        raise NoSupervisor(f"no process {pid}")
    places = _where(config_path)
    for directory, _ in places:
        found = read_status(directory)
        if found is not None and found.get("pid") == pid:
            return directory, found
    looked = "; ".join(f"{d / STATUS_FILE} ({why}): {_describe(d)}" for d, why in places)
    raise NoSupervisor(
        f"process {pid} is not an rproxyd supervisor, or it publishes its status elsewhere. "
        f"Looked for {looked}. The status file is in [process] runtime_dir of the configuration "
        f"the supervisor was started with: pass that file with -c")


def write_status(directory: Path, status: dict[str, Any]) -> None:
    """Replace status.json atomically, so a reader never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATUS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(status, indent=1) + "\n")
    os.replace(tmp, directory / STATUS_FILE)


def read_status(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not serving anything.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def request_reload(pid: int, directory: Path, before: dict[str, Any], timeout: float) -> tuple[bool, str]:
    """SIGHUP the supervisor found by `locate` and wait for the outcome of a reload that saw it.

    Returns (succeeded, message); raises NoSupervisor if the signal cannot be sent.
    """
    target = before["reload"]["requested"] + 1
    what = f"{before['config']} (the file rproxyd {pid} was started with)" if "config" in before else (
        f"the file rproxyd {pid} was started with")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise NoSupervisor(f"no process {pid}") from None
    except PermissionError:
        raise NoSupervisor(f"not allowed to signal process {pid} (run as its user or root)") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(directory)
        if status is not None and status.get("pid") == pid and status["reload"]["covers"] >= target:
            reload = status["reload"]
            if reload["ok"]:
                return True, f"reloaded {what}: generation {status['generation']} serves"
            return False, (f"reload failed: rproxyd {pid} refused {what}, generation "
                           f"{status['generation']} keeps serving: {reload['error']}")
        if not _alive(pid):
            return False, f"reload failed: rproxyd {pid} exited during the reload"
        time.sleep(0.02)
    return False, f"reload failed: no outcome from rproxyd {pid} within {timeout:g}s"
