"""The rproxyd command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from appliance import __version__, build, h2
from appliance.config import DEFAULT_PATH, ConfigError, load


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rproxyd", description="Pre-fork reverse HTTP(S) proxy appliance."
    )
    parser.add_argument(
        "-c", "--config", type=Path, default=DEFAULT_PATH,
        help=f"main configuration file (default {DEFAULT_PATH}); conf.d/*.toml beside it "
        "is merged in name order",
    )
    parser.add_argument(
        "-t", "--test", action="store_true",
        help="check the configuration, print OK or every error, and exit 0 or 1",
    )
    parser.add_argument(
        "--reload", type=int, metavar="PID",
        help="for systemd's ExecReload: send SIGHUP to the supervisor PID, which reloads the "
        "file it was started with, and wait for the outcome; exit 0 if the new generation "
        "serves, 1 if the reload failed, 2 if no such supervisor was found (its status.json "
        "is in [process] runtime_dir of -c FILE, else $RUNTIME_DIRECTORY or /run/rproxyd)",
    )
    parser.add_argument(
        "--reload-timeout", type=float, default=120.0, metavar="SECONDS",
        help="how long --reload waits for the outcome (default 120)",
    )
    parser.add_argument("--version", action="store_true",
                        help="print the version, the build that runs (compiled or pure Python) and the "
                             "libnghttp2 of HTTP/2, and exit")
    return parser


def _reload(args: argparse.Namespace) -> int:
    from appliance.process import status

    try:
        directory, before = status.locate(args.reload, args.config)
        started_with = before.get("config")
        if started_with and Path(started_with) != args.config.absolute():
            print(f"rproxyd: note: {args.config} only locates the status file; rproxyd "
                  f"{args.reload} reloads {started_with}, the file it was started with")
        ok, message = status.request_reload(args.reload, directory, before, args.reload_timeout)
    except status.NoSupervisor as exc:
        print(f"rproxyd: cannot find the supervisor: {exc}", file=sys.stderr)
        return 2
    print(f"rproxyd: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _print_version() -> int:
    try:
        print(f"rproxyd {__version__}, {build.describe(load=True)}\n{h2.describe()}", flush=True)
    except BrokenPipeError:
        # A reader that took only the first line (`| head -1`): what is left goes nowhere,
        # and the exit-time flush must not raise again (the Python docs' recipe for SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        return _print_version()
    if args.reload is not None:
        return _reload(args)
    try:
        config = load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"rproxyd: {problem}", file=sys.stderr)
        if args.test:
            print(f"rproxyd: configuration {args.config} test failed", file=sys.stderr)
        return 1
    if args.test:
        print(f"rproxyd: configuration {args.config} is OK")
        return 0
    from appliance.supervisor import run

    return run(args.config, config)
