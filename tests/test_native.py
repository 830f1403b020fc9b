"""The mypyc-compiled hot path: used when built and current, the Python source otherwise."""

from __future__ import annotations

import ast
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmsgate import _native
from kmsgate.protocol import session

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
MODULES = ("kmsgate.protocol.rpc", "kmsgate.server.idle")


def _layout(tmp_path: Path, *, group: bool = True, built: tuple[str, ...] = MODULES) -> Path:
    """A folder laid out like src/: sources, their builds and the group library."""
    for name in MODULES:
        source = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("")
        os.utime(source, (1_000, 1_000))
        if name in built:
            source.with_name(source.stem + SUFFIX).write_bytes(b"")
    if group:
        (tmp_path / f"{_native.GROUP_LIBRARY}{SUFFIX}").write_bytes(b"")
    return tmp_path


def test_a_complete_current_build_is_used(tmp_path: Path) -> None:
    assert _native.build_problem(_layout(tmp_path), MODULES, checkout=True) is None


def test_no_group_library_means_source(tmp_path: Path) -> None:
    problem = _native.build_problem(_layout(tmp_path, group=False), MODULES, checkout=True)
    assert problem is not None and "not compiled" in problem


def test_one_missing_module_means_source_for_all(tmp_path: Path) -> None:
    root = _layout(tmp_path, built=MODULES[:1])
    problem = _native.build_problem(root, MODULES, checkout=False)
    assert problem == "kmsgate.server.idle is not compiled"


def test_an_edit_after_the_build_means_source_in_a_checkout_only(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    edited = root / "kmsgate" / "server" / "idle.py"
    os.utime(edited, (10**10, 10**10))
    problem = _native.build_problem(root, MODULES, checkout=True)
    assert problem is not None and problem.startswith("idle.py changed after it was compiled")
    # Installed files (no checkout) keep their build whatever their times.
    assert _native.build_problem(root, MODULES, checkout=False) is None


def test_a_build_left_by_a_module_taken_off_the_listing_is_found(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    # Built when the listing named it, then taken off: Python would import this build.
    leftover = root / "kmsgate" / "recording" / "handover.py"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("")
    leftover.with_name("handover" + SUFFIX).write_bytes(b"")
    (root / "kmsgate" / "protocol" / ("_cipher.abi3.so")).write_bytes(b"")  # not mypyc's
    assert _native.stale_builds(root, MODULES) == ("kmsgate.recording.handover",)
    assert _native.stale_builds(root, (*MODULES, "kmsgate.recording.handover")) == ()
    finder = _native.SourceFinder(root, _native.stale_builds(root, MODULES))
    spec = finder.find_spec("kmsgate.recording.handover")
    assert spec is not None and spec.origin == str(leftover)


def test_the_listing_names_existing_modules() -> None:
    names = _native.listed_modules(ROOT / "src" / "kmsgate" / "native_modules.txt")
    assert "kmsgate.protocol.session" in names and "kmsgate.server.connection" in names
    for name in names:
        assert ROOT.joinpath("src", *name.split(".")).with_suffix(".py").is_file(), name


def _third_party_bases(source: Path) -> list[str]:
    """Classes in `source` deriving from a class imported from outside kmsgate and stdlib."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    origin: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                origin[alias.asname or alias.name] = node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                origin[alias.asname or alias.name.split(".")[0]] = alias.name
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for base in node.bases:
            head = base
            while isinstance(head, ast.Attribute | ast.Subscript):
                head = head.value
            module = origin.get(head.id, "") if isinstance(head, ast.Name) else ""
            top = module.split(".")[0]
            if module and top != "kmsgate" and top not in sys.stdlib_module_names:
                found.append(f"{node.name}({ast.unparse(base)}) from {module}")
    return found


def test_no_compiled_class_derives_from_a_third_party_class(tmp_path: Path) -> None:
    # The isolated build environment lacks third-party packages: mypyc then sees such a
    # base as Any and built a class without the instance dict it needed (a clean clone
    # crashed on prometheus_client's Collector where a warm incremental build had passed).
    names = _native.listed_modules(ROOT / "src" / "kmsgate" / "native_modules.txt")
    found = {
        name: bases
        for name in names
        if (bases := _third_party_bases(ROOT.joinpath("src", *name.split(".")).with_suffix(".py")))
    }
    assert found == {}
    # What the check would catch (the metrics' collectors once derived so):
    caught = tmp_path / "collector.py"
    caught.write_text("from prometheus_client.registry import Collector\nclass C(Collector): ...\n")
    assert _third_party_bases(caught) == ["C(Collector) from prometheus_client.registry"]


def test_the_finder_loads_every_listed_module_from_source(tmp_path: Path) -> None:
    finder = _native.SourceFinder(ROOT / "src", ["kmsgate.protocol.session"])
    spec = finder.find_spec("kmsgate.protocol.session")
    assert spec is not None and spec.origin == str(ROOT / "src/kmsgate/protocol/session.py")
    assert finder.find_spec("kmsgate.protocol.ndr") is None


@pytest.mark.skipif(
    bool(os.environ.get("KMSGATE_PURE_PYTHON_HOT_PATH")), reason="source run asked for"
)
def test_the_test_run_exercises_the_compiled_build() -> None:
    # scripts/test installs with mypyc; a silent fall-back would leave the build untested.
    assert _native.NATIVE, _native.NATIVE_STATUS
    assert session.__file__ is not None and session.__file__.endswith(SUFFIX)


@pytest.mark.timeout(300)
def test_the_source_passes_the_protocol_tests_too() -> None:
    """The suite runs compiled; the Python source of the same modules must pass as well, and
    with the Python reference of the C layout and ring append (every request decoded by
    rpc.py, ndr.py and messages.py, every draft appended by ring.py)."""
    env = {
        **os.environ,
        "KMSGATE_PURE_PYTHON_HOT_PATH": "1",
        "KMSGATE_PURE_PYTHON_WIRE": "1",
        "KMSGATE_PURE_PYTHON_RING": "1",
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import kmsgate.protocol.session as s, kmsgate.protocol.wire as w;"
         " print(s.__file__, w.WIRE_BACKEND)"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip().endswith("session.py Python (KMSGATE_PURE_PYTHON_WIRE=1)")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist",
         "tests/protocol", "tests/server/test_host.py", "tests/store/test_record_ring.py"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
