"""The compiled request path: the modules appliance/_build_modules.txt lists, compiled by Cython
into extension modules beside their .py files, which stay the pure-Python build.

    python setup.py build_ext --inplace      what make, debian/rules and perf/run --rproxyd-ref run

It also compiles the C bindings (BINDINGS: appliance/h2/session.pyx for libnghttp2,
appliance/http/cork.pyx for TCP_CORK), which are no choice between builds: they are built and
loaded in the pure-Python build too.

The Cython version is pinned in pyproject.toml ([build-system] requires); the compiler
directives are here and nowhere else. After a build, appliance/_build_info.json records what
was built (appliance/build.py reads it to choose the build at run time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import Cython
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from appliance import build  # noqa: E402 - the digest the run-time check compares

BUILD_LIST = ROOT / "appliance" / "_build_modules.txt"
# Never compiled: the package's __init__ and the module that chooses the build run first.
NOT_COMPILABLE = {"appliance/__init__.py", "appliance/build.py"}

DIRECTIVES = {
    "language_level": 3,
    # binding=False: module functions and methods are Cython's builtin-style functions, which
    # uvloop and the other compiled modules call faster than binding cyfunctions. Nothing at run
    # time introspects these modules' own functions (the phase checks inspect the operator's
    # classes, never compiled); a test of an interface reads the source (test_seam_units.py).
    "binding": False,
    # Index checks stay as Python has them: a compiled module must behave as its .py file
    # (IndexError, negative indices), never read past a buffer.
    "boundscheck": True,
    "wraparound": True,
    # The .pxd beside each .py declares the types; the .py's annotations are for readers and
    # mypy, and some (asyncio.Transport for a uvloop transport) would be wrong as C-level checks.
    "annotation_typing": False,
}


def listed_modules() -> list[str]:
    """The listed paths, each checked: an existing .py module of the package."""
    paths = []
    for number, line in enumerate(BUILD_LIST.read_text().splitlines(), 1):
        path = line.split("#", 1)[0].strip()
        if not path:
            continue
        where = f"{BUILD_LIST.relative_to(ROOT)}:{number}: {path}"
        if not path.startswith("appliance/") or not path.endswith(".py") or path in NOT_COMPILABLE:
            raise SystemExit(f"{where}: not a compilable module of appliance/")
        if not (ROOT / path).is_file():
            raise SystemExit(f"{where}: no such file")
        paths.append(path)
    return paths


class BuildExt(build_ext):
    """build_ext that removes extensions no longer listed and records what it built."""

    def run(self) -> None:
        target = ROOT if self.inplace else Path(self.build_lib)
        built = {ext.name: Path(self.get_ext_filename(ext.name)).name for ext in self.extensions}
        if self.inplace:
            for stale in ROOT.glob("appliance/**/*.cpython-*.so"):
                name = ".".join((*stale.relative_to(ROOT).parts[:-1], stale.name.split(".")[0]))
                if name not in built:
                    stale.unlink()
                    stale.with_name(stale.name.split(".")[0] + ".c").unlink(missing_ok=True)
        super().run()
        modules = {name: {"extension": filename, "digest": SOURCE_DIGESTS[name]}
                   for name, filename in built.items() if name in SOURCE_DIGESTS}
        info = target / "appliance" / build.INFO_NAME
        info.write_text(json.dumps({"cython": Cython.__version__, "modules": modules}, indent=1) + "\n")


# Named explicitly: appliance/upstream is a namespace package (no __init__.py), from which
# Cython alone would not derive the module's full name.
EXTENSIONS = [Extension(path.removesuffix(".py").replace("/", "."), [path]) for path in listed_modules()]
# The sources as cythonize() below reads them, digested before it does: a module edited during
# the build is then recorded with its old digest, so the run-time check finds the extension stale
# (digested after the build, the record claimed the edit for an extension built without it).
SOURCE_DIGESTS = {ext.name: build.source_digest(build.module_source(ext.name)) for ext in EXTENSIONS}
# The C bindings: Cython modules of their own (.pyx), against a system library. Not recorded in
# _build_info.json (appliance/build.py's choice is between a listed module's .py and extension);
# with no .py beside them, they load the ordinary way in both builds.
BINDINGS = [
    # HTTP/2 (issue 17): Debian's libnghttp2-14, headers from libnghttp2-dev.
    Extension("appliance.h2.session", ["appliance/h2/session.pyx"], libraries=["nghttp2"]),
    # TCP_CORK by file descriptor, without uvloop's per-call Python socket object.
    Extension("appliance.http.cork", ["appliance/http/cork.pyx"]),
]

setup(
    # include_path: the .pxd files are found by package path from the top of the tree (the
    # namespace package appliance/upstream is not found otherwise, and its .pxd would be skipped).
    ext_modules=cythonize(EXTENSIONS + BINDINGS, compiler_directives=DIRECTIVES, include_path=[str(ROOT)],
                          quiet=True),
    cmdclass={"build_ext": BuildExt},
)
