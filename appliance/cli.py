"""The rproxyd command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance import __version__
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
    parser.add_argument("--version", action="version", version=f"rproxyd {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    from appliance.worker import run_single

    return run_single(config)
