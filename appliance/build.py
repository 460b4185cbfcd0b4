"""Which build of the request path this process runs: compiled or pure Python.

setup.py compiles the modules appliance/_build_modules.txt lists (Cython) into extension
modules beside their .py files, and records what it built in _build_info.json: the Cython
version, and for each module its extension file and a digest of its sources (.py and .pxd).
The .py files themselves are the pure-Python build.

`select()` runs when the package is imported (appliance/__init__.py), before any of its
modules. It puts a finder at the head of sys.meta_path that loads every appliance module from
its .py file, except the recorded extension modules when the compiled build runs, which it
does unless:
- RPROXYD_PURE is set (to anything but "" or "0"); forked workers inherit the choice, and
  re-executed or child interpreters inherit the variable;
- nothing was built, an extension file is missing, or a module's sources changed since the
  build (its digest differs): a stale extension never runs code that is not in the tree.
An extension that is there but fails to import (damaged, built for another libc) is replaced by
its source, and `describe()` says so; so is every extension whose initialisation then fails
because it cimports from a module that came from source, which provides neither the extension
types (their vtables) nor the C functions (downstream.pxd cimports serialize_fields from
headers) a compiled module links to. Only the finder decides, so an extension left over from
a module no longer listed is never loaded either.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

PURE_ENV = "RPROXYD_PURE"
PACKAGE = Path(__file__).resolve().parent
INFO_NAME = "_build_info.json"

_extensions: dict[str, Path] = {}  # module name -> extension file, when the compiled build runs
_failed: dict[str, str] = {}  # module name -> why its extension did not import
_pure_because = ""
_cython = ""


def source_digest(source: Path) -> str:
    """The digest of a module's sources as compiled: its .py file and its .pxd beside it, if any."""
    digest = hashlib.sha256(source.read_bytes())
    declarations = source.with_suffix(".pxd")
    if declarations.exists():
        digest.update(declarations.read_bytes())
    return digest.hexdigest()


def module_source(name: str) -> Path:
    """The .py file of an appliance module, by its dotted name."""
    return PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")


def _built(info: dict) -> tuple[dict[str, Path], str]:
    """The extension files of a build record, or {} and why they cannot run."""
    found: dict[str, Path] = {}
    if not info["modules"]:
        return {}, "the build compiled no module"
    for name, entry in info["modules"].items():
        source = module_source(name)
        extension = source.with_name(entry["extension"])
        if not extension.exists() or not any(extension.name.endswith(suffix)
                                             for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            return {}, f"no extension module {extension.name} for this Python"
        if not source.exists() or source_digest(source) != entry["digest"]:
            return {}, f"{source.relative_to(PACKAGE.parent)} changed since the build; run make"
        found[name] = extension
    return found, ""


def select() -> None:
    """Choose the build for this process and install the finder that loads it."""
    global _pure_because, _cython
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        _pure_because = f"{PURE_ENV}={os.environ[PURE_ENV]}"
    else:
        try:
            info = json.loads((PACKAGE / INFO_NAME).read_text())
            found, _pure_because = _built(info)
            _cython = info["cython"]
        except FileNotFoundError:
            _pure_because = "not built; run make"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _pure_because = f"unreadable {INFO_NAME}: {exc!r}"
        else:
            _extensions.update(found)
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def describe(load: bool = False) -> str:
    """One line: the build that runs, and why it is the pure one. `load` imports the compiled
    modules first, so that one that fails to import is reported."""
    if load:
        for name in _extensions:
            importlib.import_module(name)
    if not _extensions:
        return f"pure Python ({_pure_because})"
    if _failed and len(_failed) == len(_extensions):
        return f"pure Python (the extension modules failed to import: {_failures()})"
    if _failed:
        return (f"compiled with Cython {_cython}, but from source after failing to import: "
                f"{_failures()}")
    return f"compiled with Cython {_cython} ({len(_extensions)} modules)"


def _failures() -> str:
    return "; ".join(f"{name}: {why}" for name, why in _failed.items())


class _Finder(importlib.abc.MetaPathFinder):
    """Finds appliance's modules: the chosen extension modules, and the .py file of every other."""

    def find_spec(self, fullname: str, path: list[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if path is None or not fullname.startswith("appliance."):
            return None
        tail = fullname.rpartition(".")[2]
        for directory in path:
            source = os.path.join(directory, tail + ".py")
            if not os.path.isfile(source):
                continue
            extension = _extensions.get(fullname)
            if extension is None:
                return importlib.util.spec_from_file_location(fullname, source)
            return importlib.util.spec_from_file_location(
                fullname, extension, loader=_ExtensionOrSource(fullname, str(extension), source))
        return None  # a package (its __init__.py), found the ordinary way


class _ExtensionOrSource(importlib.abc.Loader):
    """Loads an extension module; if it fails to import, the module's .py file instead."""

    def __init__(self, name: str, extension: str, source: str) -> None:
        self._extension = importlib.machinery.ExtensionFileLoader(name, extension)
        self._source = importlib.machinery.SourceFileLoader(name, source)
        self._chosen: importlib.abc.Loader = self._extension

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        try:
            return self._extension.create_module(spec)  # dlopen() and the module's init function
        except ImportError as exc:
            _failed[spec.name] = str(exc)
            spec.origin = self._source.path  # the module's __file__
            self._chosen = self._source
            return None

    def exec_module(self, module: ModuleType) -> None:
        if self._chosen is self._source:
            self._source.exec_module(module)
            return
        try:
            self._extension.exec_module(module)  # the module's body: its imports and cimports
        except Exception as exc:
            # A module it cimports from came from source (an error of the module's own raises
            # again from its source). The import system returns whatever sys.modules holds
            # once exec_module returns: the module made from source, then.
            _failed[module.__name__] = f"{type(exc).__name__}: {exc}"
            spec = importlib.util.spec_from_file_location(module.__name__, self._source.path)
            replacement = importlib.util.module_from_spec(spec)
            sys.modules[module.__name__] = replacement
            self._source.exec_module(replacement)
