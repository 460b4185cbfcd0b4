"""Import an operator's phases module from its file, find its classes, and check them.

Every problem is one line that starts with the file and line it is about, so the
operator can jump to it: an import error names the line of the module where it was
raised, a bad phase the line of its `def`.

A module is imported under a name of its own each time (rproxyd_phases_<n>_<stem>),
compiled from the file's source rather than from a cached .pyc, so a reload always
runs what the file holds now (a .pyc is keyed by second-resolution mtime and size, and
/etc/rproxy/phases is not writable by the service user anyway).
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import itertools
import linecache
import os
import re
import sys
import traceback
from types import ModuleType
from typing import Any

from appliance.phases import ASYNC_PHASES, PHASES, Phases

# Pingora phases an operator coming from it might write; rproxyd has no such phase, and a
# method silently never called is worse than an error.
PINGORA_ONLY = frozenset((
    "early_request_filter", "request_body_filter", "proxy_upstream_filter", "connected_to_upstream",
    "fail_to_connect", "upstream_response_filter", "upstream_response_body_filter",
    "response_trailer_filter", "upstream_response_trailer_filter", "error_while_proxy",
    "request_summary", "suppress_error_log", "init_downstream_modules", "request_cache_filter",
))
_PHASE_LIST = ", ".join(PHASES)
_generation = itertools.count(1)
_imported: dict[str, str] = {}  # file → module name of its newest import in this process


class PhaseError(Exception):
    """A problem with an operator's phases module; the message starts with file:line."""


def import_module(path: str) -> ModuleType:
    """Import the module in file `path` afresh; PhaseError naming file and line if it fails."""
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        raise PhaseError(f"{path}: cannot read: {exc.strerror}") from None
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"rproxyd_phases_{next(_generation)}_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None  # a path always gives a spec
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look classes' modules up here
    try:
        code = compile(source, path, "exec", dont_inherit=True)
        # Tracebacks and inspect read the source through linecache: give them the text that
        # was compiled, not whatever the file holds when an error happens later.
        text = source.decode("utf-8", "replace")
        linecache.cache[path] = (len(text), None, text.splitlines(True), path)
        exec(code, module.__dict__)
    except SyntaxError as exc:
        del sys.modules[name]
        raise PhaseError(f"{exc.filename or path}:{exc.lineno or 1}: syntax error: {exc.msg}") from None
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        line = line_in(path, exc)
        raise PhaseError(f"{path}:{line}: importing failed: {describe(exc)}") from None
    old = _imported.get(path)
    if old is not None:
        sys.modules.pop(old, None)
    _imported[path] = name
    return module


def line_in(path: str, exc: BaseException) -> int:
    """The line of `path` in the traceback's last frame there (the operator's own line)."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == path]
    return (frames[-1].lineno or 1) if frames else 1


def describe(exc: BaseException) -> str:
    """"Type: message", as a traceback's last line."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def classes_in(module: ModuleType) -> dict[str, type[Phases]]:
    """The subclasses of Phases the module defines itself (not those it imports), in order."""
    return {name: value for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, Phases) and value is not Phases
            and value.__module__ == module.__name__}


def class_line(cls: type) -> str:
    """"file:line" of a class statement."""
    path = inspect.getsourcefile(cls) or "?"
    try:
        line = inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        line = 1
    return f"{path}:{line}"


def pick_class(module: ModuleType, name: str) -> type[Phases]:
    """The class `name`, or without a name the module's one subclass of Phases."""
    found = classes_in(module)
    path = module.__file__
    if name:
        value = getattr(module, name, None)
        if isinstance(value, type) and issubclass(value, Phases) and value is not Phases:
            return value
        known = ", ".join(found) or "none"
        if value is None:
            raise PhaseError(f"{path}: no class {name} (subclasses of Phases there: {known})")
        raise PhaseError(f"{path}: {name} is not a subclass of appliance.phases.Phases "
                         f"(subclasses there: {known})")
    if not found:
        raise PhaseError(f"{path}: no subclass of appliance.phases.Phases is defined")
    if len(found) > 1:
        where = ", ".join(f"{cls_name} at line {class_line(cls).rsplit(':', 1)[1]}"
                          for cls_name, cls in found.items())
        raise PhaseError(f"{path}: {len(found)} subclasses of Phases ({where}); name the one to use "
                         "with [phases] class")
    return next(iter(found.values()))


def defined_phases(cls: type[Phases]) -> list[str]:
    """The phases `cls` overrides, in PHASES order."""
    return [name for name in PHASES if getattr(cls, name) is not getattr(Phases, name)]


def validate(cls: type[Phases]) -> list[str]:
    """Every problem of a class: unknown or misspelt phases, wrong signatures, async where
    it may not be, and an __init__ that needs arguments. Each starts with file:line."""
    problems = [_check_phase(cls, name) for name in defined_phases(cls)]
    problems.extend(_unknown_phases(cls))
    try:
        inspect.signature(cls).bind()
    except TypeError:
        problems.append(f"{_where(cls.__init__, cls)}: {cls.__name__}() is made with no arguments; "
                        f"its __init__{inspect.signature(cls)} needs some")
    except ValueError:
        pass  # no signature to inspect (a builtin __init__): nothing to check
    return sorted((problem for problem in problems if problem), key=_file_order)


def _file_order(problem: str) -> tuple[str, int]:
    """Sort key of a "file:line: message" problem: as the file reads."""
    match = re.match(r"(.*?):(\d+): ", problem)
    return (match[1], int(match[2])) if match else (problem, 0)


def _check_phase(cls: type[Phases], name: str) -> str:
    raw = inspect.getattr_static(cls, name)
    where = _where(raw, cls)
    # staticmethod and classmethod objects unwrap to their function: refuse them first.
    if isinstance(raw, staticmethod | classmethod) or not inspect.isfunction(inspect.unwrap(raw)):
        return (f"{where}: {cls.__name__}.{name} must be a method (def {name}{_base_signature(name)}), "
                f"not {type(raw).__name__}")
    function = inspect.unwrap(raw)
    if inspect.isasyncgenfunction(function) or inspect.isgeneratorfunction(function):
        return f"{where}: {name} is a generator (it yields); a phase returns its result"
    if inspect.iscoroutinefunction(raw) and name not in ASYNC_PHASES:
        return (f"{where}: {name} may not be async (only {' and '.join(sorted(ASYNC_PHASES))} may "
                "be; the others run while the response is relayed)")
    expected = len(inspect.signature(getattr(Phases, name)).parameters)
    signature = inspect.signature(raw)
    try:
        signature.bind(*range(expected))
    except TypeError:
        return f"{where}: {name}{signature} does not match {name}{_base_signature(name)}"
    return ""


def _base_signature(name: str) -> str:
    parameters = inspect.signature(getattr(Phases, name)).parameters
    return "(" + ", ".join(parameters) + ")"


def _unknown_phases(cls: type[Phases]) -> list[str]:
    problems = []
    for owner in cls.__mro__:
        if owner is Phases or owner is object:
            continue
        for name, value in vars(owner).items():
            if name.startswith("_") or name in PHASES or not _callable_attribute(value):
                continue
            close = difflib.get_close_matches(name, PHASES, n=1, cutoff=0.8)
            if name in PINGORA_ONLY:
                why = f"{name} is a Pingora phase rproxyd does not have"
            elif close or name.endswith(("_filter", "_peer")):
                hint = f" (did you mean {close[0]}?)" if close else ""
                why = f"unknown phase {name}{hint}"
            else:
                continue  # a helper method of the operator's own
            problems.append(f"{_where(value, owner)}: {why}; phases are {_PHASE_LIST}")
    return problems


def _callable_attribute(value: Any) -> bool:
    return inspect.isfunction(value) or isinstance(value, staticmethod | classmethod)


def _where(value: Any, cls: type) -> str:
    """"file:line" of a method (through decorators), else of its class."""
    function = getattr(value, "__func__", value)
    code = getattr(inspect.unwrap(function), "__code__", None) if callable(function) else None
    if code is None:
        return class_line(cls)
    return f"{code.co_filename}:{code.co_firstlineno}"
