"""WriterProcess: drafts written by a real child process, its restarts, limits and shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.catalog import default_catalog
from kmsgate.net import Peer
from kmsgate.protocol.events import ActivationRefused, ActivationServed
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import KmsRequest, KmsResponse
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.recording.frames import HEADER, MAX_FRAME, FrameError, encode_frame, read_frame
from kmsgate.recording.process import WriterProcess
from kmsgate.recording.recorder import ActivationRecorder
from kmsgate.store.database import Store
from kmsgate.store.drafts import DRAFT_FIELDS, DraftError, RecordDraft, record_of
from kmsgate.store.errors import StoreError
from tests.store.test_writer import wait_for
from tests.support.ports import closed_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_764_000_000_250_000  # microseconds since the epoch
CATALOG = default_catalog()
WIN_PRO = CATALOG.resolve_product("Windows 10/11 Pro")
EPID = "06401-00206-551-123456-03-1033-17763.0000-0452020"


def drafts(count: int, *, start: int = T0, node: str = "n") -> list[RecordDraft]:
    """Served requests from distinct machines, one refused undecodable request every tenth,
    a second apart."""
    clock = iter(start + i * 1_000_000 for i in range(count))
    recorder = ActivationRecorder(lambda draft: True, CATALOG, node=node, clock=lambda: next(clock))
    made: list[RecordDraft] = []
    for index in range(count):
        if index % 10 == 9:
            refused = ActivationRefused(1, TransferSyntax.NDR32, None, HResult.INVALID_DATA, "bad")
            made.append(recorder.draft_for(Peer(f"2001:db8::{index:x}", 50000), refused))
            continue
        request = KmsRequest(
            6, WIN_PRO.application_id, WIN_PRO.id, WIN_PRO.kms_id, uuid.uuid4(), 25, 0,
            f"LAB-{index:05d}",
        )  # fmt: skip
        response = KmsResponse(6, EPID, request.client_machine_id, 0, 50, 120, 10080)
        served = ActivationServed(1, TransferSyntax.NDR32, request, response)
        made.append(recorder.draft_for(Peer(f"192.0.2.{index % 250}", 40000 + index), served))
    return made


def unreachable_postgres() -> str:
    """A PostgreSQL URL on a loopback port nobody listens on: the store is down."""
    return f"postgresql://kmsgate:secret@127.0.0.1:{closed_port()}/kmsgate"


async def test_drafts_land_with_every_field(db_url: str) -> None:
    store = await Store.open(db_url)
    made = drafts(40, node="node-p")
    try:
        async with WriterProcess(db_url, node="node-p", flush_interval=0.05) as writer:
            assert writer.pid is not None and writer.pid != os.getpid()
            assert all(writer.submit(draft) for draft in made)
            assert writer.hand_over()  # in the pipe already
            await wait_for(lambda: writer.written == 40)
        assert (writer.depth, writer.dropped, writer.written) == (0, 0, 40)
        stored = (await store.list_activations(limit=100)).items
        expected = [record_of(draft) for draft in made]
        fields = [
            (r.time, r.cmid, r.machine_name, r.address, r.sku_id, r.sku_name, r.license_status,
             r.protocol, r.result, r.hresult, r.node)
            for r in sorted(stored, key=lambda row: row.time)
        ]  # fmt: skip
        assert fields == [
            (e.time, e.client_machine_id, e.machine_name, e.address, e.sku_id, e.sku_name,
             e.license_status, e.protocol, e.result, e.hresult, e.node)
            for e in expected
        ]  # fmt: skip
        assert fields[9][3:] == (
            "2001:db8::9", None, "undecodable request", None, None, "refused",
            HResult.INVALID_DATA, "node-p",
        )  # fmt: skip
        client = await store.get_client(expected[0].client_machine_id or uuid.uuid4())
        assert client is not None
        assert (client.sku_name, client.last_epid, client.last_address) == (
            "Windows 10/11 Pro",
            EPID,
            "192.0.2.0",
        )
    finally:
        await store.close()


async def test_close_writes_what_is_queued_and_ends_the_child(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    await (await Store.open(url)).close()
    writer = WriterProcess(url, node="n", flush_interval=1.0)
    await writer.start()
    pid = writer.pid
    for draft in drafts(25):
        writer.submit(draft)
    await writer.close()  # long before the 1 s flush interval: close() must flush
    assert (writer.written, writer.dropped, writer.depth) == (25, 0, 0)
    assert not writer.submit(drafts(1)[0])
    assert writer.dropped == 1
    with pytest.raises(ProcessLookupError):
        os.kill(pid or 0, 0)
    with sqlite3.connect(tmp_path / "kms.db") as db:
        assert db.execute("SELECT count(*) FROM activations").fetchone() == (25,)


async def test_a_killed_child_is_restarted_and_gets_no_record_less(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kmsgate")
    url = unreachable_postgres()
    writer = WriterProcess(url, node="n", flush_interval=0.05, restart_delay=0.05)
    await writer.start()
    first = writer.pid
    for draft in drafts(7):
        writer.submit(draft)
    assert writer.hand_over()
    # The child holds them (the database is down) and its retries come back as failures.
    await wait_for(lambda: writer.failures >= 1 and writer._in_flight == 7)
    assert writer.depth == 7 and writer.written == 0
    assert any("store unavailable" in r.getMessage() for r in caplog.records)
    os.kill(first or 0, signal.SIGKILL)
    await wait_for(lambda: writer.restarts == 1 and writer._ready.is_set())
    assert writer.pid != first
    # Nothing dropped: the successor holds the same seven.
    await wait_for(lambda: writer._in_flight == 7)
    assert (writer.dropped, writer.depth) == (0, 7)
    assert any("its 7 unconfirmed records go to the next one" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    writer.submit(drafts(1)[0])
    assert writer.hand_over()
    await wait_for(lambda: writer._in_flight == 8)
    writer._close_timeout = 0.2
    await writer.close()
    # No successor after close: what the database never took is counted, not hidden.
    assert (writer.dropped, writer.depth) == (8, 0)


async def test_a_killed_child_s_records_reach_the_database_through_its_successor(
    tmp_path: Path,
) -> None:
    # The child is stopped (SIGSTOP) so it confirms nothing, then killed: every draft it got
    # must be written by the next child, in order, none twice (it had committed none).
    url = f"sqlite:///{tmp_path}/kmsgate.db"
    writer = WriterProcess(url, node="n", flush_interval=0.05, restart_delay=0.05)
    await writer.start()
    first = writer.pid or 0
    os.kill(first, signal.SIGSTOP)
    sent = drafts(25)
    for draft in sent:
        writer.submit(draft)
    assert writer.hand_over()
    os.kill(first, signal.SIGKILL)
    await wait_for(lambda: writer.restarts == 1 and writer.written == 25, timeout=30)
    assert writer.dropped == 0
    await writer.close()
    store = await Store.open(url)
    try:
        page = await store.list_activations(limit=100)
    finally:
        await store.close()
    stored = sorted(str((row.time, row.machine_name)) for row in page.items)
    expected = [record_of(d) for d in sent]
    assert stored == sorted(str((r.time, r.machine_name)) for r in expected)


async def test_the_queue_bound_holds_across_the_pipe() -> None:
    writer = WriterProcess(unreachable_postgres(), node="n", max_queue=5, close_timeout=0.2)
    await writer.start()
    released: list[str] = []
    assert all(writer.submit(draft) for draft in drafts(8))
    assert not writer.hand_over()  # room for 5 in the child: 3 wait here, and their answers
    writer.when_handed_over(lambda: released.append("answers"))
    await wait_for(lambda: writer._in_flight == 5)  # sent: the bound still counts them
    await asyncio.sleep(0.2)
    assert (writer.depth, writer.dropped, released) == (8, 0, [])
    assert not writer.hand_over()
    await writer.close()
    # Nothing will carry them now: counted as dropped, and whoever waited is let go.
    assert (writer.written, writer.dropped, writer.depth, released) == (0, 8, 0, ["answers"])
    assert not writer.submit(drafts(1)[0])
    assert writer.dropped == 9


async def test_the_child_outlives_sigterm_and_sigint_until_its_input_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    await (await Store.open(url)).close()
    async with WriterProcess(url, node="n", flush_interval=0.05) as writer:
        os.kill(writer.pid or 0, signal.SIGTERM)
        os.kill(writer.pid or 0, signal.SIGINT)
        await asyncio.sleep(0.2)
        for draft in drafts(3):
            writer.submit(draft)
        assert writer.hand_over()
        await wait_for(lambda: writer.written == 3)
        assert writer.restarts == 0


async def test_a_child_that_cannot_open_the_store_fails_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = WriterProcess("oracle://nobody@127.0.0.1/none", node="n")
    with pytest.raises(StoreError, match="did not start"):
        await writer.start()
    assert any(r.levelno >= logging.ERROR and "writer" in r.getMessage() for r in caplog.records)
    await writer.close()


def test_records_survive_sigkill_of_the_serving_process(tmp_path: Path) -> None:
    """The child sees its input end when the parent dies and still writes what it got."""
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from kmsgate.store.database import Store
        from kmsgate.recording.process import WriterProcess
        from tests.store.test_writer_process import drafts

        async def main():
            await (await Store.open({url!r})).close()
            writer = WriterProcess({url!r}, node="n", flush_interval=1.0)
            await writer.start()
            for draft in drafts(50):
                writer.submit(draft)
            writer.hand_over()
            while writer._in_flight < 50:
                await asyncio.sleep(0.01)
            print(writer.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    deadline = time.monotonic() + 10
    count = 0
    while time.monotonic() < deadline:
        with sqlite3.connect(tmp_path / "kms.db") as db:
            (count,) = db.execute("SELECT count(*) FROM activations").fetchone()
        if count == 50:
            break
        time.sleep(0.05)
    assert count == 50


async def test_an_unsendable_or_malformed_draft_is_dropped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    await (await Store.open(url)).close()
    good = drafts(4)  # three are sent as they are, the third is spoiled
    unsendable: Any = (*good[0][:-1], object())  # marshal refuses it in this process
    wrong_shape: Any = good[1][:5]  # the child refuses it
    wrong_type: Any = (good[2][0], b"not sixteen bytes", *good[2][2:])
    async with WriterProcess(url, node="n", flush_interval=0.05) as writer:
        for draft in (good[0], unsendable, good[1], wrong_shape, wrong_type, good[3]):
            assert writer.submit(draft)
        assert writer.hand_over()
        await wait_for(lambda: writer.written == 3 and writer.dropped == 3)
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot be sent" in m for m in messages)
    assert sum("malformed record draft" in m for m in messages) == 2


@pytest.mark.parametrize(
    "draft",
    [
        (),
        (1.0,) * (DRAFT_FIELDS + 1),
        [0] * DRAFT_FIELDS,
        (10**30, *drafts(1)[0][1:]),  # a time no datetime holds
        (T0 / 1e6, *drafts(1)[0][1:]),  # seconds, not microseconds
        (T0, b"short", *drafts(1)[0][2:]),  # a CMID of 5 bytes
        (T0, None, True, *drafts(1)[0][3:]),  # a bool for the machine name
        (*drafts(1)[0][:-1], None),  # no node
    ],
)
def test_record_of_rejects_malformed_drafts(draft: Any) -> None:
    with pytest.raises(DraftError):
        record_of(draft)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.builds(encode_frame, st.tuples(st.text(), st.integers())))
def test_read_frame_returns_a_message_none_or_frameerror(data: bytes) -> None:
    async def read() -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader)

    try:
        message = asyncio.run(read())
    except FrameError:
        return
    assert message is None or (isinstance(message, tuple) and isinstance(message[0], str))


def test_oversized_frames_are_refused_before_reading_them() -> None:
    async def read() -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(HEADER.pack(MAX_FRAME + 1))
        return await read_frame(reader)  # no EOF fed: it must not wait for the body

    with pytest.raises(FrameError, match="exceeds"):
        asyncio.run(read())


async def test_a_full_queue_holds_drafts_says_so_once_and_again_when_it_drains(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    await (await Store.open(url)).close()
    made = drafts(9)
    released: list[int] = []
    async with WriterProcess(url, node="n", max_queue=4, flush_interval=0.05) as writer:
        assert all(writer.submit(draft) for draft in made[:6])
        assert not writer.hand_over()
        writer.when_handed_over(lambda: released.append(writer.written))
        await wait_for(lambda: writer.written == 6)
        assert released and released[0] >= 2  # let go only once the child made room
        assert all(writer.submit(draft) for draft in made[6:])
        assert writer.hand_over()
        await wait_for(lambda: writer.written == 9)
    assert writer.dropped == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "store queue full (4 records): answers wait until the store catches up",
        "store queue has room again; answers no longer wait",
    ]
    with sqlite3.connect(tmp_path / "kms.db") as db:
        assert db.execute("SELECT count(DISTINCT cmid) FROM activations").fetchone() == (9,)


def test_handed_over_drafts_survive_an_immediate_sigkill(tmp_path: Path) -> None:
    """hand_over() True means in the ring the child maps: a SIGKILL right after loses none."""
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from kmsgate.store.database import Store
        from kmsgate.recording.process import WriterProcess
        from tests.store.test_writer_process import drafts

        async def main():
            await (await Store.open({url!r})).close()
            writer = WriterProcess({url!r}, node="n", flush_interval=1.0)
            await writer.start()
            os.kill(writer.pid, signal.SIGSTOP)  # it reads nothing until we are gone
            for draft in drafts(300):
                writer.submit(draft)
            assert writer.hand_over()
            print(writer.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    # Not subprocess.run: the stopped child holds the script's stderr open.
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline() or 0)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert child
    os.kill(child, signal.SIGCONT)
    deadline = time.monotonic() + 15
    count = 0
    while time.monotonic() < deadline:
        with sqlite3.connect(tmp_path / "kms.db") as db:
            (count,) = db.execute("SELECT count(*) FROM activations").fetchone()
        if count == 300:
            break
        time.sleep(0.05)
    assert count == 300


async def test_a_stuck_child_s_ring_goes_whole_to_the_next(tmp_path: Path) -> None:
    """A child stopped with a full ring, then killed: its successor writes each record once."""
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    await (await Store.open(url)).close()
    made = drafts(12_000)
    async with WriterProcess(
        url, node="n", max_queue=5_000, flush_interval=0.05, restart_delay=0.05
    ) as writer:
        assert writer.ring_size >= 5_000 * 220  # room for the bound in records, not less
        first = writer.pid or 0
        os.kill(first, signal.SIGSTOP)  # a stuck child: the ring fills up
        sent = 0
        while writer.hand_over():
            for draft in made[sent : sent + 500]:
                writer.submit(draft)
            sent += 500
            assert sent <= len(made), "the ring never filled"
        assert writer.depth == sent  # nothing written, nothing lost: the bound holds answers
        assert writer._in_flight == 5_000
        released: list[bool] = []
        writer.when_handed_over(lambda: released.append(True))
        assert not released
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: writer.restarts == 1 and bool(released), timeout=15)
        # What the dead child left in the ring goes to the next one: none lost.
        await wait_for(lambda: writer.written == sent, timeout=30)
    assert (writer.written, writer.dropped) == (sent, 0)
    with sqlite3.connect(tmp_path / "kms.db") as db:
        rows = db.execute("SELECT count(*), count(DISTINCT time) FROM activations")
        assert rows.fetchone() == (sent, sent)  # each once: the stopped child wrote none


async def test_the_child_logs_at_the_level_it_is_given_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    await (await Store.open(url)).close()
    caplog.set_level(logging.WARNING, logger="kmsgate")
    quiet = WriterProcess(url, node="n")
    await quiet.start()
    await quiet.close()
    assert not any("writer process done" in r.getMessage() for r in caplog.records)
    verbose = WriterProcess(url, node="n", flush_interval=0.05)
    await verbose.start()
    caplog.set_level(logging.INFO, logger="kmsgate")
    verbose.set_log_level(logging.INFO)  # as Service.reload does after a SIGHUP
    verbose.submit(drafts(1)[0])
    await verbose.close()
    assert any(
        r.getMessage() == "record writer process done: 1 records written, 0 dropped"
        for r in caplog.records
    )
