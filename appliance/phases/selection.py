"""Which class each vhost runs, as the configuration asks, and the dispatch a worker builds.

`[phases] module` names the file; `[phases] class` the default class (without it, the
module's one subclass of Phases); a vhost's `phases = "Class"` its own. The default is
needed only when some vhost names no class of its own, so a module of several
classes works without `class` when every vhost names one.

`resolve` is shared by `rproxyd -t` (run in a child process: appliance/phases/check.py)
and by the worker that loads the module for serving (`dispatch_per_vhost`), so both
judge a module by the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from appliance.phases import Phases
from appliance.phases.dispatch import NO_PHASES, PhaseDispatch, compile_dispatch
from appliance.phases.loader import PhaseError, describe, import_module, line_in, pick_class, validate

KeyPath = tuple[str | int, ...]
Problem = tuple[KeyPath, str]

MODULE_KEY: KeyPath = ("phases", "module")
CLASS_KEY: KeyPath = ("phases", "class")


def resolve(module: ModuleType, default_class: str,
            vhost_classes: Sequence[str]) -> tuple[list[type[Phases] | None], list[Problem]]:
    """Each vhost's class (None where it cannot be found), and every problem, with its key path.

    `vhost_classes` holds each vhost's `phases` value in order, "" for the default.
    """
    problems: list[Problem] = []
    default: type[Phases] | None = None
    if default_class or "" in vhost_classes or not vhost_classes:
        try:
            default = pick_class(module, default_class)
        except PhaseError as exc:
            problems.append((CLASS_KEY if default_class else MODULE_KEY, str(exc)))
    chosen: list[type[Phases] | None] = []
    for index, name in enumerate(vhost_classes):
        if not name:
            chosen.append(default)
            continue
        try:
            chosen.append(pick_class(module, name))
        except PhaseError as exc:
            problems.append((("vhost", index, "phases"), str(exc)))
            chosen.append(None)
    for cls in dict.fromkeys(c for c in (default, *chosen) if c is not None):
        problems.extend((MODULE_KEY, problem) for problem in validate(cls))
    return chosen, problems


def dispatch_per_vhost(path: str, default_class: str, vhost_classes: Sequence[str]) -> list[PhaseDispatch]:
    """For a worker: import the module, make one instance per class, compile each vhost's dispatch.

    Raises PhaseError (its message names file and line) on any problem, including an
    exception from a class's __init__, so the worker can fail its boot and the
    generation before it keeps serving.
    """
    module = import_module(path)
    chosen, problems = resolve(module, default_class, vhost_classes)
    if problems:
        raise PhaseError("; ".join(message for _, message in problems))
    compiled: dict[type[Phases], PhaseDispatch] = {}
    for cls in chosen:
        if cls is not None and cls not in compiled:
            compiled[cls] = compile_dispatch(_instantiate(cls, module.__file__ or path))
    return [NO_PHASES if cls is None else compiled[cls] for cls in chosen]


def _instantiate(cls: type[Phases], path: str) -> Phases:
    try:
        return cls()
    except Exception as exc:  # the operator's __init__: reported like an import error
        raise PhaseError(f"{path}:{line_in(path, exc)}: {cls.__name__}() failed: {describe(exc)}") from None
