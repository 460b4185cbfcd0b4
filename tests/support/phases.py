"""Operator phase modules for tests: the shipped examples, and modules written at test time."""

from __future__ import annotations

import textwrap
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "etc/rproxy/phases/examples"


def phase_module(tmp_path: Path, source: str, name: str = "site.py") -> Path:
    """Write a phases module (indented source is dedented) into tmp_path; its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path
