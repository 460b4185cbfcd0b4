"""Configuration-time checks that every log destination the processes write can be opened.

The error log, the access log and the runtime directory (status.json) are opened at
start-up, by every worker and again on each reload; one that cannot be opened would
stop the start with a traceback or leave workers unable to boot. Certificates, keys,
CAs, CRLs and ticket-key files are read in full by appliance/tls/check.py.

The checks use access(2) with the effective user and group, so they hold for the user
that runs `rproxyd -t`: the packaged unit runs its ExecStartPre check as the service's
User=. Nothing is created here: a check run as root must not leave root-owned log
files that the service user then cannot write (nginx -t does create them).
"""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path

from appliance.config.schema import Config, ProcessConfig
from appliance.config.values import parse_address

Problem = tuple[tuple[str | int, ...], str]

_WRITE = os.W_OK | os.X_OK  # creating a file in a directory needs both
DEFAULT_RUNTIME_DIR = Path("/run/rproxyd")


def runtime_dir(process: ProcessConfig | None) -> Path:
    """Where status.json goes: [process] runtime_dir, else systemd's RuntimeDirectory=, else /run/rproxyd."""
    if process is not None and process.runtime_dir:
        return Path(process.runtime_dir)
    return Path(os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or DEFAULT_RUNTIME_DIR)


def _user() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _access(path: Path, mode: int) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def appendable(path: str) -> str | None:
    """Why a file opened for append, and created when missing, cannot be; None if it can."""
    target = Path(os.path.realpath(path))  # open(2) follows a symlink, even a dangling one
    if target.is_dir():
        return f"{target} is a directory"
    if target.exists():
        return None if _access(target, os.W_OK) else f"{target} is not writable by {_user()}"
    parent = target.parent
    if not parent.is_dir():
        return f"cannot create {path}: directory {parent} does not exist"
    if not _access(parent, _WRITE):
        return f"cannot create {path}: directory {parent} is not writable by {_user()}"
    return None


def creatable_dir(path: Path) -> str | None:
    """Why a directory created when missing (with its parents) and written into cannot be."""
    found = _nearest_existing(path)
    if not found.is_dir():
        return f"cannot create {path}: {found} is not a directory"
    if not _access(found, _WRITE):
        if found == path:
            return f"{path} is not writable by {_user()}"
        return f"cannot create {path}: {found} is not writable by {_user()}"
    return None


def syslog_reachable(address: str) -> str | None:
    """Why a syslog address cannot be used; None if it can.

    A unix socket is not checked: like openlog(3), the workers connect when the daemon is
    there, and a syslog that starts after rproxyd is fine. A host:port must parse and its
    name resolve now (as nginx resolves its syslog server at configuration time): each
    worker resolves it when it boots, and a name that does not resolve stops the boot.
    """
    if address.startswith("/"):
        return None
    try:
        parsed = parse_address(address)
        socket.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_DGRAM)
    except ValueError as exc:
        return f"expected a unix socket path or host:port: {exc}"
    except OSError as exc:
        return f"cannot resolve {address!r}: {exc.strerror or exc}"
    return None


def check_paths(config: Config) -> list[Problem]:
    """Every log file or directory of `config` that cannot be opened, as (key path, message)."""
    problems: list[Problem] = []
    if config.log.file and (why := appendable(config.log.file)):
        problems.append((("log", "file"), why))
    access = config.access_log
    if access.enabled and access.destination == "file" and (why := appendable(access.file)):
        problems.append((("access_log", "file"), why))
    if access.enabled and access.destination == "syslog" and (why := syslog_reachable(access.syslog_address)):
        problems.append((("access_log", "syslog_address"), why))
    run_dir = runtime_dir(config.process)
    if why := creatable_dir(run_dir):
        default = "" if config.process.runtime_dir else (
            f" (the default: $RUNTIME_DIRECTORY, else {DEFAULT_RUNTIME_DIR}; set [process] "
            "runtime_dir, or run under systemd with RuntimeDirectory=)")
        problems.append((("process", "runtime_dir"), f"{why}{default}"))
    return problems
