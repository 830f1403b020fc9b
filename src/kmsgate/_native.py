"""Whether this process runs the mypyc-compiled hot path or its Python source.

setup.py compiles the modules named in native_modules.txt with mypyc. Compiled modules call
each other directly, so they load all or none: when one is missing, when a source checkout
holds a .py newer than its build (an edit not yet rebuilt), or when
KMSGATE_PURE_PYTHON_HOT_PATH=1, a finder makes every one of them load from its .py.
Imported by kmsgate/__init__.py before anything else. Also: how the optional C extensions
(_cipher.c, _wire.c, _ring.c) are found or skipped (optional_extension).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
GROUP_LIBRARY = "kmsgate_native__mypyc"  # setup.py's mypycify group_name, plus __mypyc


def listed_modules(listing: Path) -> tuple[str, ...]:
    """Dotted names of the modules a native_modules.txt lists."""
    names = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line.removesuffix(".py").replace("/", "."))
    return tuple(names)


def _built(directory: Path, stem: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def build_problem(root: Path, modules: Sequence[str], *, checkout: bool) -> str | None:
    """Why the compiled modules under `root` (the folder holding kmsgate/) cannot be used."""
    if not modules:
        return "no module is listed for compiling"
    if _built(root, GROUP_LIBRARY) is None:  # beside kmsgate/: src/ or site-packages
        return "not compiled (pip install . builds it with mypyc)"
    for name in modules:
        source = root.joinpath(*name.split(".")).with_suffix(".py")
        built = _built(source.parent, source.stem)
        if built is None:
            return f"{name} is not compiled"
        if checkout and source.stat().st_mtime > built.stat().st_mtime:
            return f"{source.name} changed after it was compiled (pip install -e . rebuilds)"
    return None


def stale_builds(root: Path, modules: Sequence[str]) -> tuple[str, ...]:
    """Modules under `root` with a mypyc build beside their source that the listing no
    longer names: a checkout's leftovers, which Python would import ahead of the source."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # mypyc's: this interpreter's own
    listed = set(modules)
    stale = []
    for built in sorted((root / "kmsgate").rglob(f"*{suffix}")):
        source = built.with_name(built.name.removesuffix(suffix) + ".py")
        name = ".".join(source.relative_to(root).with_suffix("").parts)
        if source.exists() and name not in listed:
            stale.append(name)
    return tuple(stale)


class SourceFinder(importlib.abc.MetaPathFinder):
    """Loads the listed modules from their .py files, ahead of any compiled build."""

    def __init__(self, root: Path, modules: Sequence[str]) -> None:
        self._sources = {
            name: root.joinpath(*name.split(".")).with_suffix(".py") for name in modules
        }

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        source = self._sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _choose() -> tuple[bool, str]:
    modules = listed_modules(PACKAGE_DIR / "native_modules.txt")
    # Only a source checkout edits files in place; installed files keep their build.
    checkout = (PACKAGE_DIR.parent.parent / ".git").exists()
    if checkout:
        # Taken off the listing since its last build: its source, whatever else happens.
        stale = stale_builds(PACKAGE_DIR.parent, modules)
        if stale:
            sys.meta_path.insert(0, SourceFinder(PACKAGE_DIR.parent, stale))
    if os.environ.get("KMSGATE_PURE_PYTHON_HOT_PATH", "") not in ("", "0"):
        problem: str | None = "KMSGATE_PURE_PYTHON_HOT_PATH is set"
    else:
        problem = build_problem(PACKAGE_DIR.parent, modules, checkout=checkout)
    if problem is None:
        return True, f"compiled (mypyc): {len(modules)} modules"
    sys.meta_path.insert(0, SourceFinder(PACKAGE_DIR.parent, modules))
    return False, f"Python source ({problem})"


NATIVE, NATIVE_STATUS = _choose()


def optional_extension(name: str, switch: str) -> tuple[ModuleType | None, str]:
    """The C extension module `name` and its build ("abi3" or "version-specific build"), or
    None and why not: KMSGATE_PURE_PYTHON_<switch>=1, or "C extension not built"."""
    variable = f"KMSGATE_PURE_PYTHON_{switch}"
    if os.environ.get(variable) == "1":
        return None, f"{variable}=1"
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None, "C extension not built"
    built = str(getattr(module, "__file__", ""))
    return module, "abi3" if ".abi3." in built else "version-specific build"
