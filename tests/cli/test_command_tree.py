"""The command tree: modules loaded only for the command that runs, one set of store options."""

from __future__ import annotations

import inspect
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import kmsgate.cli
from kmsgate.cli.common import StoreOptions, store_command
from kmsgate.cli.help import SettingsHelpCommand
from tests.support.cli import clean_env
from tests.support.cli import kmsgate as run_kmsgate
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

STORE_FLAGS = ("--config", "--db", "--data-dir")
# What only other commands need; a long-running serve must not hold any of it.
OTHER_COMMANDS = {f"kmsgate.cli.{module}" for module in kmsgate.cli.COMMANDS.values()} - {
    "kmsgate.cli.serve"
}
NOT_FOR_SERVE = OTHER_COMMANDS | {
    "kmsgate.client.loadgen",
    *(
        f"kmsgate.client.diagnose{step}"
        for step in ("", "_answer", "_clock", "_dns", "_host", "_report", "_rpc", "_tcp")
    ),
}

# Runs the console entry point in-process and writes the modules it loaded at exit.
MODULES_AT_EXIT = r"""
import atexit, sys
out = sys.argv.pop(1)
def dump():
    with open(out, "w") as handle:
        handle.write("\n".join(sorted(sys.modules)))
atexit.register(dump)
from kmsgate.cli import main
main()
"""


def loaded_by(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    listing = tmp_path / "modules.txt"
    proc = subprocess.Popen(
        [sys.executable, "-c", MODULES_AT_EXIT, str(listing), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=clean_env(tmp_path),
    )
    return proc, listing


def test_version_builds_no_command_and_imports_no_settings(tmp_path: Path) -> None:
    proc, listing = loaded_by(["--version"], tmp_path)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (0, f"kmsgate {kmsgate.__version__}\n", "")
    modules = set(listing.read_text().split())
    # kmsgate/__init__ decides between the compiled and the source hot path (a few stats).
    assert not {m for m in modules if m.startswith("kmsgate.")} - {"kmsgate.cli", "kmsgate._native"}
    assert not modules & {"pydantic", "sqlalchemy", "rich.table", "dns.resolver"}


def modules_of_a_running_serve(args: list[str], port: int, tmp_path: Path) -> set[str]:
    """The modules a `kmsgate serve` held once it listened on `port`, then was stopped."""
    proc, listing = loaded_by(["serve", "--listen", f"127.0.0.1:{port}", *args], tmp_path)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "serve exited before listening"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    modules = set(listing.read_text().split())
    assert "kmsgate.cli.serve" in modules  # the listing is of the serving process
    return modules


def test_a_bare_serve_holds_only_its_command_and_the_modules_it_uses(tmp_path: Path) -> None:
    modules = modules_of_a_running_serve(["--no-store", "--no-web"], free_port(), tmp_path)
    assert not modules & NOT_FOR_SERVE
    # Without the web listener nothing scrapes: metrics are counted without prometheus_client
    # (4 MiB with the HTTP modules its package imports).
    assert "kmsgate.observability.metrics" in modules
    assert not {"prometheus_client", "http.server", "wsgiref"} & modules
    # Nor does anyone log in: argon2-cffi and its C bindings load with the first hash.
    assert "kmsgate.auth.passwords" in modules
    assert not {"argon2", "_cffi_backend"} & modules
    # Logging to stderr: the handlers module (pickle, its queue and socket handlers) is
    # --log-file's alone.
    assert not {"logging.handlers", "pickle"} & modules


def test_a_default_node_holds_only_the_modules_it_uses(tmp_path: Path) -> None:
    # The dashboard shares display.py with the CLI's tables; Rich (1 MiB) is the CLI's alone.
    # A SQLite node has no use for SQLAlchemy's PostgreSQL dialect (2 MiB). Its database is
    # made first, as on every start but the first: migrating loads Alembic, and with it that.
    data = str(tmp_path / "data")
    assert run_kmsgate("db", "upgrade", "--data-dir", data, tmp_path=tmp_path).returncode == 0
    args = ["--data-dir", data, "--web", "127.0.0.1:0"]
    modules = modules_of_a_running_serve(args, free_port(), tmp_path)
    assert {"kmsgate.web.app", "kmsgate.observability.display"} <= modules
    assert {"sqlalchemy.dialects.sqlite", "kmsgate.store.counts"} <= modules
    # Nor pydantic.v1 (1.8 MiB, FastAPI's check for v1 models), nor argon2 before a login.
    unused = {"rich", "rich.text", "sqlalchemy.dialects.postgresql", "pydantic.v1", "argon2"}
    assert not modules & (NOT_FOR_SERVE | unused)


def test_every_command_is_built_from_its_module_and_listed_in_order() -> None:
    root = typer.main.get_command(kmsgate.cli.app)
    assert isinstance(root, typer.core.TyperGroup)
    ctx = typer.Context(root)
    assert root.list_commands(ctx) == list(kmsgate.cli.COMMANDS)
    for name, module in kmsgate.cli.COMMANDS.items():
        command = root.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.callback is None or command.callback.__module__ in (
            f"kmsgate.cli.{module}",
            "kmsgate.cli.common",  # store_command's wrapper
        )
    assert root.get_command(ctx, "nonsense") is None


def test_an_unknown_command_is_a_usage_error_naming_the_choices() -> None:
    done = CliRunner().invoke(kmsgate.cli.app, ["user", "list"])
    assert done.exit_code == 2
    assert "No such command 'user'" in done.output
    assert "users" in done.output  # the suggestion comes from the lazily built names


def test_the_root_refuses_commands_added_outside_the_table() -> None:
    root = typer.main.get_command(kmsgate.cli.app)
    assert isinstance(root, typer.core.TyperGroup)
    with pytest.raises(TypeError, match="COMMANDS"):
        root.add_command(typer.main.get_command(kmsgate.cli.create_app()), "extra")


def store_commands() -> list[tuple[str, typer.core.TyperCommand]]:
    root = typer.main.get_command(kmsgate.cli.app)
    assert isinstance(root, typer.core.TyperGroup)
    found = []
    for name, command in root.commands.items():
        subcommands = getattr(command, "commands", None) or {}
        for title, cmd in [(f"{name} {s}", c) for s, c in subcommands.items()] or [(name, command)]:
            # serve and config show take --db among every serve setting.
            settings_command = isinstance(cmd, SettingsHelpCommand)
            if not settings_command and any("--db" in getattr(p, "opts", ()) for p in cmd.params):
                found.append((title, cmd))
    return found


def test_every_command_with_db_has_the_same_three_store_options_last() -> None:
    commands = dict(store_commands())
    # Every command that reads or changes the store, and nothing else.
    assert set(commands) == {
        "clients", "stats", "audit", "report", "db upgrade",
        "users add", "users passwd", "users remove", "users list", "users quota",
    }  # fmt: skip
    reference = None
    for title, command in commands.items():
        options = [p for p in command.params if isinstance(p, typer.core.TyperOption)]
        store = [(tuple(p.opts), p.help, p.default) for p in options[-3:]]
        assert [opts[0] for opts, _, _ in store] == list(STORE_FLAGS), title
        reference = reference or store
        assert store == reference, title


def test_store_command_passes_the_options_as_one_value() -> None:
    app = typer.Typer()
    seen: list[StoreOptions] = []

    @app.command()
    @store_command
    def probe(store_options: StoreOptions, name: str) -> None:
        seen.append(store_options)

    done = CliRunner().invoke(app, ["x", "--db", "a.db", "--data-dir", "d", "--config", "c"])
    assert done.exit_code == 0, done.output
    assert seen == [StoreOptions(config=Path("c"), db="a.db", data_dir=Path("d"))]
    assert [p.name for p in inspect.signature(probe).parameters.values()] == [
        "name", "config", "db", "data_dir",
    ]  # fmt: skip


def test_store_command_refuses_a_command_without_the_parameter() -> None:
    def forgot(name: str) -> None:
        """No store_options parameter."""

    with pytest.raises(TypeError, match="store_options"):
        store_command(forgot)
