"""`rproxyd -t` (and every reload) checks the phases module in a child process.

Importing runs the operator's code: it may print, open files, start threads, hang or
crash the interpreter. None of that may reach the process that checks the rest of the
configuration (the supervisor, on a reload), so a fresh interpreter imports the module
(`python -m appliance.phases.check REQUEST`), resolves and validates the classes as a
worker would (appliance/phases/selection.py), and hands back the problems as JSON on a
private copy of its standard output; anything the module writes goes to stderr. The
classes are not instantiated: __init__ runs in the workers (it may open the files it
writes, and a check run as root must not create them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import appliance
from appliance.config.schema import Config
from appliance.phases.selection import MODULE_KEY, Problem

# Seconds an import may take before the check gives up. A reload checks in the supervisor's
# loop, so this bounds how long a module that blocks at import can hold the supervisor.
CHECK_TIMEOUT = 10.0


def check_phases(config: Config) -> list[Problem]:
    """Problems of the configured phases module, as (key path, message); [] without one."""
    module = config.phases.module
    if not module:
        return []
    request = {"module": module, "class": config.phases.class_name,
               "vhosts": [vhost.phases if vhost is not None else "" for vhost in config.vhost]}
    return run_check(request)


def run_check(request: dict[str, object]) -> list[Problem]:
    module = request["module"]
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # the module's code must not talk to systemd for rproxyd
    # The child imports appliance from where this process did.
    root = str(Path(appliance.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run([sys.executable, "-m", "appliance.phases.check", json.dumps(request)],
                              stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        return [(MODULE_KEY, f"{module}: importing took longer than {CHECK_TIMEOUT:g} s; a phases module "
                 "must not block at import")]
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    if done.returncode != 0 or not isinstance(answer, list):
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        last = f": {said[-1]}" if said else ""
        return [(MODULE_KEY, f"{module}: the import check ended abnormally (exit status "
                 f"{done.returncode}){last}")]
    return [(tuple(path), message) for path, message in answer]


def _child(request: dict[str, object]) -> list[Problem]:
    from appliance.phases.loader import PhaseError, import_module
    from appliance.phases.selection import resolve

    try:
        module = import_module(str(request["module"]))
    except PhaseError as exc:
        return [(MODULE_KEY, str(exc))]
    vhosts = request["vhosts"]
    assert isinstance(vhosts, list)
    return resolve(module, str(request["class"]), vhosts)[1]


def main(argv: list[str]) -> int:
    # Keep stdout for the answer: whatever the module prints (at fd level too) goes to stderr.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    problems = _child(json.loads(argv[0]))
    json.dump([[list(path), message] for path, message in problems], answer)
    answer.flush()
    # The module may have left threads running; they must not keep the check alive.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
