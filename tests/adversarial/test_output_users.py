"""A user name that looks like Rich markup is listed as text, not read as markup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

KMSGATE = Path(sys.executable).with_name("kmsgate")


def run(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100", "KMSGATE_DATA_DIR": str(tmp_path)}
    return subprocess.run(
        [str(KMSGATE), *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def test_a_markup_looking_user_name_is_listed_literally(tmp_path: Path) -> None:
    for name in ("[/bold]x", "[red]admin[/red]", "[link=http://x]y"):
        added = run(tmp_path, "users", "add", name, "--password-stdin", stdin="a long password!\n")
        assert added.returncode == 0, added.stderr
    listed = run(tmp_path, "users", "list")
    assert listed.returncode == 0, listed.stderr
    for name in ("[/bold]x", "[red]admin[/red]", "[link=http://x]y"):
        assert name in listed.stdout
