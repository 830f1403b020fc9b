"""Trap 2: where --db points, and commands that must never create a database."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.cli import (
    clean_env,
    kmsgate,
    log_records,
    start_serve,
    stop_serve,
    wait_listening,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

READ_COMMANDS = [
    ["stats"],
    ["clients"],
    ["audit"],
    ["users", "list"],
    ["stats", "--json"],
    ["clients", "--json"],
    ["audit", "--json"],
    ["users", "list", "--json"],
    ["users", "passwd", "alice", "--password-stdin"],
    ["users", "remove", "alice"],
    ["users", "quota", "alice", "--week", "1"],
]
PASSWORD = "a-long-enough-password\n"


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.name != "xdg") if path.exists() else []


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_commands_refuse_a_missing_database_and_create_nothing(
    command: list[str], tmp_path: Path
) -> None:
    # The example: sqlite:///srv/kms/k.db is relative, so it names ./srv/kms/k.db.
    done = kmsgate(*command, "--db", "sqlite:///srv/kms/k.db", tmp_path=tmp_path, stdin=PASSWORD)
    assert done.returncode == 1
    line = one_error_line(done)
    assert line.startswith(f"error: no database at {tmp_path}/srv/kms/k.db"), line
    assert f"note: db 'sqlite:///srv/kms/k.db' is a relative path: using {tmp_path}/srv" in (
        done.stderr
    )
    assert "sqlite:////srv/kms/k.db" in done.stderr  # the note says how to write it
    assert not (tmp_path / "srv").exists()
    # Nor is the data directory, where the database is by default.
    env = clean_env(tmp_path, KMSGATE_DATA_DIR=str(tmp_path / "data"))
    done = kmsgate(*command, tmp_path=tmp_path, stdin=PASSWORD, env=env)
    assert done.returncode == 1
    assert one_error_line(done).startswith(f"error: no database at {tmp_path}/data/kmsgate.db")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", READ_COMMANDS[:4], ids=" ".join)
def test_read_commands_leave_an_empty_file_alone(command: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    done = kmsgate(*command, "--db", str(empty), tmp_path=tmp_path)
    assert done.returncode == 1
    assert one_error_line(done).startswith(f"error: {empty} is not a SQLite database")
    assert empty.stat().st_size == 0
    assert files_under(tmp_path) == [empty]


def test_a_plain_relative_path_is_made_absolute_and_said(tmp_path: Path) -> None:
    done = kmsgate("users", "add", "admin", "--admin", "--password-stdin", "--db", "k.db",
                   tmp_path=tmp_path, stdin=PASSWORD)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"note: db 'k.db' is a relative path: using {tmp_path}/k.db",
        f"created the database {tmp_path}/k.db",
    ]
    assert (tmp_path / "k.db").is_file()
    # The same file by its absolute path, as a plain path and as a four-slash URL.
    for db in (str(tmp_path / "k.db"), f"sqlite:///{tmp_path / 'k.db'}"):
        done = kmsgate("users", "list", "--json", "--db", db, tmp_path=tmp_path)
        assert done.returncode == 0 and done.stderr == ""
        assert '"name": "admin"' in done.stdout


def test_serve_logs_the_absolute_path_of_a_relative_sqlite_url(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    proc = start_serve("--db", "sqlite:///rel.db", "--listen", f"127.0.0.1:{port}", "--no-web",
                       tmp_path=tmp_path, cwd=work)  # fmt: skip
    try:
        wait_listening(proc, port)
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err
    messages = [msg for _, _, msg in log_records(err)]
    assert any(
        m.startswith(f"store {work}/rel.db (SQLite; activation rows bound ") for m in messages
    )
    assert any(m.startswith(f"db 'sqlite:///rel.db' is a relative path: using {work}/rel.db")
               for m in messages)  # fmt: skip
    assert (work / "rel.db").is_file()


@pytest.mark.parametrize("db", ["nonexistent/dir/k.db", "sqlite:///nonexistent/dir/k.db"])
def test_serve_refuses_a_database_in_a_missing_folder(db: str, tmp_path: Path) -> None:
    done = kmsgate("serve", "--db", db, "--listen", "127.0.0.1:0", "--no-web",
                   tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"error: db: the folder {tmp_path}/nonexistent/dir does not exist (create it first; "
        "kmsgate creates the database file, not its folder)\n"
    )
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize("command", [["db", "upgrade"], ["users", "add", "x", "--password-stdin"]])
def test_creating_commands_refuse_a_missing_folder_too(command: list[str], tmp_path: Path) -> None:
    done = kmsgate(*command, "--db", str(tmp_path / "no" / "k.db"), tmp_path=tmp_path,
                   stdin=PASSWORD)  # fmt: skip
    assert done.returncode == 2
    assert (
        one_error_line(done)
        == f"error: db: the folder {tmp_path}/no does not exist (create it first)"
    )
    assert not (tmp_path / "no").exists()


def test_serve_creates_the_default_data_directory(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "deep" / "data"
    proc = start_serve("--data-dir", str(data), "--listen", f"127.0.0.1:{port}", "--no-web",
                       tmp_path=tmp_path)  # fmt: skip
    try:
        wait_listening(proc, port)
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err
    assert (data / "kmsgate.db").is_file()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_an_unreachable_postgresql_is_named_by_host_and_port(host: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the connection is refused
    url = f"postgresql://kms:Secret-Pw@{host}:{port}/kms"
    for command in (["stats"], ["users", "list"], ["db", "upgrade"]):
        done = kmsgate(*command, "--db", url, tmp_path=tmp_path)
        assert done.returncode == 1
        assert one_error_line(done) == (
            f"error: cannot reach PostgreSQL at {host}:{port}: connection refused "
            "(is the server running there?)"
        )
        assert "Secret-Pw" not in done.stderr
    done = kmsgate("serve", "--db", url, "--listen", "127.0.0.1:0", "--no-web",
                   tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 1
    errors = [msg for level, _, msg in log_records(done.stderr) if level == "ERROR"]
    assert errors == [
        f"cannot open the store: cannot reach PostgreSQL at {host}:{port}: connection refused "
        "(is the server running there?)"
    ]
    assert "Secret-Pw" not in done.stderr


def test_read_commands_do_not_create_tables_in_an_empty_postgresql_database(
    tmp_path: Path,
) -> None:
    from tests.support.postgres import PostgresServer, require_bindir

    server = PostgresServer(require_bindir())
    try:
        server.start()
        url = server.create_database("empty_kms")
        for command in (["stats"], ["clients", "--json"], ["users", "list"]):
            done = kmsgate(*command, "--db", url, tmp_path=tmp_path)
            assert done.returncode == 1
            assert one_error_line(done).startswith(
                f"error: PostgreSQL at 127.0.0.1:{server.port} holds no kmsgate data"
            )
        tables = server.psql(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            database="empty_kms",
        )
        assert tables.strip() == "0"
    finally:
        server.cleanup()


def test_the_environment_variable_takes_a_plain_path_too(tmp_path: Path) -> None:
    env = clean_env(tmp_path, KMSGATE_DB="env.db")
    done = kmsgate("stats", tmp_path=tmp_path, env=env)
    assert done.returncode == 1
    assert f"note: db 'env.db' is a relative path: using {tmp_path}/env.db" in done.stderr
    assert not (tmp_path / "env.db").exists()
