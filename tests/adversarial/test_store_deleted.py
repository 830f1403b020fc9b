"""S2: the database files or their log deleted (or replaced) under a serving node while
activations flow.

The node used to go on writing into the deleted file, silently. The promise: the node
notices within a batch, says so in its log naming the file, creates a new file at the same
path with the schema, and every activation served from then on is recorded there; the new
file is never read through the lost file's leftover -wal and -shm. A log deleted alone is
written into the file first: a crash after it loses nothing.
"""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from kmsgate.store import migrate
from tests.support.store_node import Load, Node, machine_names, node, wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.integration]
BOUND = 30.0


def integrity(server: Node) -> tuple[str, str]:
    """(PRAGMA integrity_check, schema revision) of the file at the node's path."""
    with contextlib.closing(sqlite3.connect(f"file:{server.db}?mode=ro", uri=True)) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    return check, revision


def served_after_are_recorded(server: Node, load: Load) -> None:
    """Activations served after the attack all land in the file now at the path."""
    wait_until(lambda: len(load.served_with("after")) >= 40, BOUND, "served after the attack")
    load.pause()
    wait_until(lambda: server.store_figures()["queued"] == 0, BOUND, "queue drained")
    after = load.served_with("after")
    wait_until(lambda: machine_names(server.db, "after") == after, BOUND, "all recorded")
    figures = server.store_figures()
    assert figures["dropped"] == 0, figures
    assert integrity(server) == ("ok", migrate.head())


def test_deleted_files_are_recreated_and_written_with_a_warning() -> None:
    with node() as server, Load(server.port, "before") as load:
        wait_until(lambda: len(machine_names(server.db, "before")) >= 50, BOUND, "first records")
        for path in server.files():  # mid-load: activations keep coming throughout
            path.unlink()
        load.resume("after")
        served_after_are_recorded(server, load)
        # The new file holds nothing of the deleted one (its inode number may be the same:
        # the filesystem can hand the freed one out again).
        assert len(machine_names(server.db, "before")) < len(load.served_with("before"))
        assert server.health()[0] == 200
    log = server.log()
    assert f"WARNING kmsgate.store: database file {server.db} was deleted while in use" in log
    assert f"database file {server.db} created anew with an empty schema" in log


def test_a_file_deleted_without_its_sidecars_is_not_read_through_them() -> None:
    with node() as server, Load(server.port, "before") as load:
        wait_until(lambda: len(machine_names(server.db, "before")) >= 50, BOUND, "first records")
        load.pause()
        wait_until(lambda: server.store_figures()["queued"] == 0, BOUND, "queue drained")
        # Records still in the -wal: a new file paired with it would show them (or garbage).
        assert server.db.with_name("kmsgate.db-wal").stat().st_size > 0
        server.db.unlink()
        load.resume("after")
        served_after_are_recorded(server, load)
        assert machine_names(server.db, "before") == set()
    assert "was deleted while in use" in server.log()


def test_a_replaced_file_is_reopened_and_written() -> None:
    with node() as server, Load(server.port, "before") as load:
        wait_until(lambda: len(machine_names(server.db, "before")) >= 50, BOUND, "first records")
        load.pause()
        wait_until(lambda: server.store_figures()["queued"] == 0, BOUND, "queue drained")
        # An admin restores a backup over the live file (a rename: a new inode).
        backup = server.data / "backup.db"
        with (
            contextlib.closing(sqlite3.connect(f"file:{server.db}?mode=ro", uri=True)) as live,
            contextlib.closing(sqlite3.connect(backup)) as copy,
        ):
            live.backup(copy)
        kept = machine_names(backup, "before")
        load.resume("between")
        wait_until(lambda: len(machine_names(server.db, "between")) >= 20, BOUND, "more records")
        backup.replace(server.db)
        load.resume("after")
        served_after_are_recorded(server, load)
        assert machine_names(server.db, "before") == kept
        # Written to the file that was replaced, before the node noticed: gone with it,
        # except the batch whose commit met the replacement, which is written again (all of
        # them, when one batch held them: seen once in CI on a loaded machine).
        assert machine_names(server.db, "between") <= load.served_with("between")
    log = server.log()
    assert f"database file {server.db} was replaced while in use" in log
    assert f"database file {server.db} reopened" in log


@pytest.mark.parametrize("writer", ["inline", "process"])
@pytest.mark.parametrize("lost", [("-wal",), ("-shm",), ("-wal", "-shm")])
def test_a_deleted_log_loses_nothing_to_a_crash(lost: tuple[str, ...], writer: str) -> None:
    # The -wal holds every commit since the last checkpoint (up to SQLite's 10 000 pages):
    # deleted under the node, it used to take them, and all that followed, with it at the
    # next crash. The promise: what was served before and after is in the file a SIGKILL
    # leaves behind.
    with node("--store-writer", writer) as server, Load(server.port, "before") as load:
        wait_until(lambda: len(machine_names(server.db, "before")) >= 50, BOUND, "first records")
        for suffix in lost:  # mid-load: activations keep coming throughout
            server.db.with_name(server.db.name + suffix).unlink()
        load.resume("after")
        wait_until(lambda: "reopened with a new log" in server.log(), BOUND, "the log replaced")
        wait_until(lambda: len(load.served_with("after")) >= 40, BOUND, "served after the attack")
        load.pause()
        wait_until(lambda: server.store_figures()["queued"] == 0, BOUND, "queue drained")
        server.proc.kill()
        server.proc.wait(timeout=10)
        for prefix in ("before", "after"):
            assert machine_names(server.db, prefix) == load.served_with(prefix), prefix
        assert integrity(server) == ("ok", migrate.head())
    log = server.log()
    assert f"the log of database file {server.db} (its -wal or -shm) was deleted" in log
    assert "could not be written into it" not in log
