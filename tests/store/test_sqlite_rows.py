"""Activation rows bound from C (store/_sqlite_rows.c): the same stored bytes as the sqlite3
module's path, the same errors, no statement left to hold a connection open."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmsgate.store import activation_batch, sqlite_rows
from kmsgate.store.activation_fold import _sqlite_times as python_times
from kmsgate.store.activation_fold import sqlite_months
from kmsgate.store.database import Store
from kmsgate.store.drafts import MAX_MICROS, MIN_MICROS, RecordDraft
from kmsgate.store.schema import metadata
from tests.support.records import T0, make_draft

pytestmark = pytest.mark.skipif(
    not sqlite_rows.rows_in_c(),
    reason=f"rows bound by the sqlite3 module: {sqlite_rows.C_ROWS_BUILD}",
)
ROOT = Path(__file__).resolve().parents[2]


def _table(kinds: str) -> tuple[sqlite3.Connection, str]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    columns = ", ".join(f"c{i}" for i in range(len(kinds)))
    db.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {columns})")
    return db, f"INSERT INTO t ({columns}) VALUES"


def _statement(db: sqlite3.Connection, insert: str, kinds: str, rows: int) -> Any:
    marks = "(" + ", ".join("?" * len(kinds)) + ")"
    statement = sqlite_rows.row_statement(db, f"{insert} {', '.join([marks] * rows)}", rows, kinds)
    assert statement is not None
    return statement


@given(
    micros=st.lists(st.integers(MIN_MICROS, MAX_MICROS), min_size=3, max_size=30),
    data=st.data(),
)
def test_times_and_ids_become_the_text_python_writes(
    micros: list[int], data: st.DataObject
) -> None:
    micros += [MIN_MICROS, MAX_MICROS, 0, -1, 1][: 3 - len(micros) % 3 or 3]
    ids = [data.draw(st.one_of(st.none(), st.binary(min_size=16, max_size=16))) for _ in micros]
    db, insert = _table("th")
    statement = _statement(db, insert, "th", 1 if len(micros) % 3 else 3)
    statement.insert(list(zip(micros, ids, strict=True)))
    statement.close()
    stored = db.execute("SELECT c0, c1 FROM t ORDER BY id").fetchall()
    assert [time for time, _ in stored] == python_times(micros)
    assert [key for _, key in stored] == [None if i is None else i.hex() for i in ids]
    assert [time[:7] for time, _ in stored] == sqlite_months(micros)


def test_plain_values_are_bound_as_the_sqlite3_module_binds_them() -> None:
    values = [(None, 0, -(2**63), 2**63 - 1, 2.5, "", "é\u20ac\U0001f600", b"\x00raw", True)]
    kinds = "v" * len(values[0])
    db, insert = _table(kinds)
    statement = _statement(db, insert, kinds, 1)
    statement.insert(values)
    statement.close()
    db.execute(f"{insert} ({', '.join('?' * len(kinds))})", values[0])
    through_c, through_module = db.execute("SELECT * FROM t ORDER BY id").fetchall()
    assert through_c[1:] == through_module[1:]
    typed = "SELECT " + ", ".join(f"typeof(c{i})" for i in range(len(kinds))) + " FROM t"
    assert len(set(db.execute(typed).fetchall())) == 1


@pytest.mark.parametrize(
    ("row", "error", "message"),
    [
        ((MIN_MICROS - 1, None, 1), ValueError, "years 1 to 9999"),
        ((None, None, 1), ValueError, "may not be None"),
        (("2024-01-01", None, 1), TypeError, "int of microseconds"),
        ((0, b"short", 1), ValueError, "16 bytes"),
        ((0, "0" * 32, 1), ValueError, "16 bytes"),
        ((0, None, object()), TypeError, "cannot bind"),
        ((0, None, 2**64), OverflowError, "int"),
        ((0, None), ValueError, "not a tuple of 3"),
    ],
)
def test_a_value_it_cannot_bind_is_refused_and_nothing_is_written(
    row: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    db, insert = _table("thv")
    statement = _statement(db, insert, "thv", 2)
    with pytest.raises(error, match=message):
        statement.insert([(0, None, 0), row])
    statement.insert([(1, None, 1), (2, None, 2)])  # still usable, nothing half-bound
    statement.close()
    assert db.execute("SELECT c2 FROM t").fetchall() == [(1,), (2,)]


def test_sqlite_errors_are_the_sqlite3_module_exceptions() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT NOT NULL)")
    statement = sqlite_rows.row_statement(db, "INSERT INTO t VALUES (?, ?)", 1, "vv")
    assert statement is not None
    statement.insert([(1, "x")])
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE") as raised:
        statement.insert([(1, "y")])
    assert raised.value.sqlite_errorcode == 1555  # SQLITE_CONSTRAINT_PRIMARYKEY
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        statement.insert([(2, None)])
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        sqlite_rows.row_statement(db, "INSERT INTO missing VALUES (?)", 1, "v")
    with pytest.raises(ValueError, match="rows \\* width"):
        sqlite_rows.row_statement(db, "INSERT INTO t VALUES (?, ?)", 2, "vv")
    statement.close()
    with pytest.raises(ValueError, match="closed"):
        statement.insert([(3, "z")])


def test_only_a_plain_open_sqlite3_connection_is_trusted() -> None:
    class Wrapped(sqlite3.Connection):
        pass

    wrapped = sqlite3.connect(":memory:", factory=Wrapped)
    wrapped.execute("CREATE TABLE t (a)")
    assert sqlite_rows.row_statement(wrapped, "INSERT INTO t VALUES (?)", 1, "v") is None
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a)")
    statement = sqlite_rows.row_statement(db, "INSERT INTO t VALUES (?)", 1, "v")
    assert statement is not None
    db.close()
    with pytest.raises(ValueError, match="connection was closed"):
        statement.insert([(1,)])
    statement.close()
    with pytest.raises(sqlite3.ProgrammingError):
        sqlite_rows.row_statement(db, "INSERT INTO t VALUES (?)", 1, "v")
    # The probed limit is back where it was.
    fresh = sqlite3.connect(":memory:")
    before = fresh.getlimit(sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH)
    fresh.execute("CREATE TABLE t (a)")
    assert sqlite_rows.row_statement(fresh, "INSERT INTO t VALUES (?)", 1, "v") is not None
    assert fresh.getlimit(sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH) == before


def _drafts() -> list[RecordDraft]:
    """Parts of every size, clients old and new, refusals, missing ids, hours and months
    crossed, times out of order."""
    cmids = [uuid.UUID(int=n) for n in range(1, 40)]
    drafts = []
    for i in range(2 * activation_batch.SQLITE_ROWS_PER_INSERT + 37):
        drafts.append(
            make_draft(
                time=T0 + timedelta(days=(i % 5) * 9, minutes=i * 7 % 200, microseconds=i),
                client_machine_id=None if i % 17 == 0 else cmids[i * 7 % len(cmids)],
                sku_id=None if i % 23 == 0 else uuid.UUID(int=(i % 3) + 100),
                machine_name=f"PC-{i % 11}",
                result="refused" if i % 13 == 0 else "activated",
                hresult=0xC004F074 if i % 13 == 0 else 0,
                node="node-a" if i % 2 else "node-b",
            )
        )
    return drafts


def _stored(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(path)) as db:
        return {
            table.name: db.execute(f"SELECT * FROM {table.name} ORDER BY 1, 2").fetchall()
            for table in metadata.sorted_tables
            if table.name in {"activations", "clients", "counters", "activation_hours",
                              "product_counts", "machine_months"}
        }  # fmt: skip


async def _record(path: Path, batches: list[list[RecordDraft]]) -> None:
    store = await Store.open(f"sqlite:///{path}")
    try:
        for batch in batches:
            await store.record_drafts(batch)
    finally:
        await store.close()


@pytest.mark.parametrize("sizes", [[261, 20, 6, 250], [24, 25, 26, 462]], ids=["large", "small"])
def test_every_path_stores_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: list[int]
) -> None:
    drafts, batches, start = _drafts(), [], 0
    for size in sizes:
        batches.append(drafts[start : start + size])
        start += size
    # Bound from C; raw rows refused by the connection check (converted in Python); and
    # the sqlite3 module's own path, as without the C build.
    asyncio.run(_record(tmp_path / "c.db", batches))
    with monkeypatch.context() as patch:
        patch.setattr(activation_batch, "row_statement", lambda *args: None)
        asyncio.run(_record(tmp_path / "refused.db", batches))
    with monkeypatch.context() as patch:
        patch.setattr(activation_batch, "rows_in_c", lambda: False)
        asyncio.run(_record(tmp_path / "module.db", batches))
    through_c = _stored(tmp_path / "c.db")
    assert len(through_c["activations"]) == sum(sizes)
    assert through_c == _stored(tmp_path / "refused.db") == _stored(tmp_path / "module.db")


def test_no_statement_keeps_the_database_open(tmp_path: Path) -> None:
    # A statement left prepared keeps SQLite's connection (and its log) open after close.
    path = tmp_path / "kmsgate.db"
    asyncio.run(_record(path, [_drafts()]))
    assert not Path(f"{path}-wal").exists()
    assert len(_stored(path)["activations"]) == len(_drafts())


def test_a_failing_step_leaves_nothing_of_its_batch(tmp_path: Path) -> None:
    path = tmp_path / "kmsgate.db"
    drafts = _drafts()[:60]
    broken = list(drafts[30])
    broken[6] = None  # sku_name is NOT NULL: the second of the C statement's steps fails
    with pytest.raises(Exception, match="NOT NULL"):
        asyncio.run(_record(path, [[*drafts[:30], tuple(broken), *drafts[31:]]]))  # type: ignore[list-item]
    assert _stored(path)["activations"] == []
    asyncio.run(_record(path, [drafts]))
    assert len(_stored(path)["activations"]) == 60


def test_without_the_c_build_the_store_says_so() -> None:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from kmsgate.store import sqlite_rows as s; print(s.rows_in_c(), s.describe())",
        ],
        env={**os.environ, "KMSGATE_PURE_PYTHON_SQLITE_ROWS": "1"},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert probe.stdout.strip() == (
        "False by the sqlite3 module (KMSGATE_PURE_PYTHON_SQLITE_ROWS=1)"
    )
    assert sqlite_rows.describe() == "from C (abi3)"
