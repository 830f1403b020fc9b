"""S1: the store's files made read-only, the writer restarted meanwhile, write permission back.

Descriptors opened before a chmod keep writing, so the attack also kills the record writer
process during the outage (as the SIGBUS did): its successor opens the files while they are
read-only, and SQLite then falls back to a read-only connection that the old writer kept for
good. The promise: writes resume within seconds of the files being writable again, every
record accepted meanwhile is written or counted as dropped, and /healthz says 503 while
records are being lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time

import pytest

from tests.support.store_node import (
    Load,
    Node,
    machine_names,
    node,
    wait_until,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.geteuid() == 0 and shutil.which("setpriv") is None,
        reason="as root, file modes bind only without CAP_DAC_OVERRIDE (setpriv)",
    ),
]
# The outage is a writer child restarted while the files are read-only (SQLite then opens
# them read-only): a process the inline writer does not have.
CHILD = ("--store-writer", "process")
RECOVERY_BOUND = 10.0  # promise: "within seconds"; the writer's backoff is capped at 2 s
BACKLOG_BOUND = 60.0


def settle(server: Node) -> None:
    """Until the node holds nothing unwritten, and takes nothing new for a second.

    A request whose client gave up waiting (a loaded machine) may still be answered and
    recorded after the load paused: killing the writer then would lose it by design.
    """
    last: list[int] = []

    def quiet() -> bool:
        figures = server.store_figures()
        now = [figures["queued"], figures["written"], figures["dropped"]]
        steady, last[:] = now == last and now[0] == 0, now
        if not steady:
            time.sleep(1.0)
        return steady

    wait_until(quiet, 60, "queue drained and quiet")


def outage(server: Node, load: Load, prefix: str) -> int:
    """Files read-only and a writer restarted while activations flow; returns the old pid."""
    load.pause()
    settle(server)  # nothing in flight: a killed writer takes no records with it
    server.make_read_only()
    old_writer = server.kill_writer()
    load.resume(prefix)
    wait_until(lambda: server.writer_pids() not in ([], [old_writer]), 30, "writer restarted")
    return old_writer


def test_writes_resume_within_seconds_and_nothing_accepted_is_lost() -> None:
    with node(*CHILD) as server, Load(server.port, "before") as load:
        wait_until(lambda: len(machine_names(server.db, "before")) >= 20, 30, "first records")
        outage(server, load, "during")
        # Writes fail, and keep failing: /healthz turns 503 and says why.
        wait_until(lambda: server.health()[0] == 503, 30, "/healthz 503 while writes fail")
        status, body = server.health()
        assert status == 503 and body["status"] == "losing records", body
        assert "writes failing" in body["detail"], body
        store = body["store"]
        assert "readonly" in store["last_error"]["message"], store
        assert store["failing_since"] is not None and store["queued"] > 0
        wait_until(lambda: len(load.served_with("during")) >= 50, 30, "served while read-only")
        assert not machine_names(server.db, "during")  # nothing could be written

        written_before = server.store_figures()["written"]
        server.make_writable()
        restored = time.monotonic()
        load.resume("after")
        first_write = wait_until(
            lambda: server.store_figures()["written"] > written_before,
            RECOVERY_BOUND,
            "a write after the restore",
        )
        wait_until(lambda: len(load.served_with("after")) >= 10, 30, "served after the restore")
        first_after = sorted(load.served_with("after"))[:10]
        # Queued behind what the outage left: the bound allows for writing that backlog.
        wait_until(
            lambda: set(first_after) <= machine_names(server.db, "after"),
            BACKLOG_BOUND,
            "records made after the restore written",
        )
        print(f"restore -> first write {first_write:.2f} s, records made after the restore "
              f"written {time.monotonic() - restored:.2f} s")  # fmt: skip
        load.pause()
        settle(server)
        wait_until(lambda: server.health()[0] == 200, 30, "/healthz 200 after recovery")
        status, body = server.health()
        figures = body["store"]
        assert body["status"] == "ok" and figures["failing_since"] is None
        # The last error stays visible after recovery, for the operator to see what happened.
        assert "readonly" in figures["last_error"]["message"]
        # Every activation served during the outage is in the database: none dropped.
        assert figures["dropped"] == 0
        for prefix in ("before", "during", "after"):
            assert machine_names(server.db, prefix) == load.served_with(prefix), prefix
        assert figures["written"] == len(load.served)
    assert "store back after" in server.log()


def test_an_outage_longer_than_the_queue_delays_answers_and_loses_nothing() -> None:
    # A full queue does not drop records: answers wait until their records are taken.
    queue = 40
    with node(*CHILD, "--store-queue", str(queue)) as server, Load(server.port, "before") as load:
        wait_until(lambda: len(machine_names(server.db, "before")) >= 10, 30, "first records")
        outage(server, load, "during")
        wait_until(lambda: server.health()[0] == 503, 30, "/healthz 503 while writes fail")
        # One read's records go in whole, so the queue may pass its bound by one read's worth.
        slack = 16
        _, body = server.health()
        assert body["store"]["dropped"] == 0 and body["store"]["queued"] <= queue + slack, body
        # The answers stall at the queue's size: no record beyond it is accepted, none lost.
        wait_until(lambda: len(load.served_with("during")) >= queue // 2, 30, "queue filling")
        stalled = len(load.served_with("during"))
        time.sleep(3)
        assert len(load.served_with("during")) == stalled <= queue + slack
        server.make_writable()
        wait_until(lambda: len(load.served_with("during")) > stalled + queue, 60, "answers flow")
        load.pause()
        settle(server)
        figures = server.store_figures()
        served, written = set(load.served), machine_names(server.db)
        # Every answer a client received is recorded; a few more are recorded whose held
        # answers left after their client had given up waiting.
        assert served <= written and figures["dropped"] == 0
        assert figures["written"] == len(written)
    assert "store queue full" in server.log()


def test_a_truncated_database_file_is_an_error_not_a_crash() -> None:
    """The SIGBUS: pages of a memory-mapped file that vanish kill the process touching them.

    Truncating the file makes its pages vanish for certain (a failing disk or a file
    swapped underneath does it at random): the writer must report the error, not die.
    """
    with node(*CHILD) as server, Load(server.port, "before") as load:
        wait_until(lambda: len(machine_names(server.db, "before")) >= 200, 60, "first records")
        load.pause()
        settle(server)
        # Move the pages from the log into the file, where a mapping would read them...
        with contextlib.closing(sqlite3.connect(server.db, timeout=10)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert server.db.stat().st_size > 64 * 1024
        # ...and let the writer read the file at that size (a mapping would cover it all).
        load.resume("mapped")
        wait_until(lambda: len(machine_names(server.db, "mapped")) >= 20, 30, "written again")
        load.pause()
        settle(server)
        [writer] = server.writer_pids()
        os.truncate(server.db, 8192)
        load.resume("after")
        wait_until(lambda: server.health()[0] == 503, 30, "/healthz 503 on a broken file")
        _, body = server.health()
        assert "malformed" in body["store"]["last_error"]["message"], body
        # Neither process died: same writer, same serving process, still answering.
        assert server.writer_pids() == [writer] and server.proc.poll() is None
        served_before = len(load.served_with("after"))
        wait_until(lambda: len(load.served_with("after")) > served_before, 30, "still serving")
        load.pause()
    assert "exited with status" not in server.log()
    assert server.proc.returncode == 0
