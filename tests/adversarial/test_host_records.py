"""Every answer is a record: whatever a well-formed request's field values, the host that
answers it also logs, counts and stores it, with those exact values (issue 11, H1 and §2)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsgate.config.settings import ServeSettings
from kmsgate.node import Node
from kmsgate.protocol.hresult import HResult
from kmsgate.store.database import Store
from tests.adversarial.host_attack import (
    WIN_PRO,
    Answer,
    BlockingKmsConnection,
    Fields,
    Serve,
    serving,
)
from tests.support.postgres import PostgresServer, running_postgres

pytestmark = pytest.mark.integration

U32 = 2**32 - 1
U64 = 2**64 - 1


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le", "surrogatepass")


# Names as a client may send them: NULs inside, stray bytes after the terminator, no
# terminator at all, odd byte counts, lone surrogates, controls, bidi marks, astral planes.
raw_names = st.one_of(
    st.binary(max_size=128),
    st.builds(
        lambda name, stray: (utf16(name) + b"\0\0" + stray)[:128],
        st.text(max_size=40),
        st.binary(max_size=100),
    ),
    st.text(min_size=64, max_size=64).map(lambda t: utf16(t)[:128]),
    st.lists(st.integers(0xD800, 0xDFFF), max_size=8).map(
        lambda units: b"".join(u.to_bytes(2, "little") for u in units)
    ),
    st.sampled_from(
        [b"", b"\0\0x\0", b"\xff" * 128, b"\0", utf16("[/bold]\x1b]0;x\x07\u202e\u2028")]
    ),
)
guids = st.one_of(st.just(WIN_PRO.id), st.uuids(), st.just(uuid.UUID(int=0)))
fields = st.builds(
    Fields,
    version=st.sampled_from([4, 5, 6]),
    request_time=st.one_of(st.sampled_from([0, 1, U64, 2**63]), st.integers(0, U64)),
    n_count=st.one_of(st.sampled_from([0, 1, 1000, 1001, U32]), st.integers(0, U32)),
    license_status=st.one_of(st.integers(0, 6), st.sampled_from([2**31, U32]), st.integers(0, U32)),
    raw_name=raw_names,
    is_client_vm=st.integers(0, U32),
    grace_time=st.integers(0, U32),
    application_id=st.one_of(st.just(WIN_PRO.application_id), st.uuids()),
    sku_id=guids,
    kms_id=st.one_of(st.just(WIN_PRO.kms_id), st.uuids()),
)


def expected_hresult(request: Fields) -> int:
    """What the host must answer: served unless the N-count is above 1000."""
    return int(HResult.INVALID_DATA) if request.n_count > 1000 else 0


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    data = tmp_path_factory.mktemp("records")
    # Client times from 1601 to 60056 are the point here: the ±4 h clock check is off.
    with serving(
        data, "--store-flush-interval", "0.01", "--max-clock-skew", "0", web=True
    ) as serve:
        yield serve


def stored_rows(serve: Serve, requests: list[Fields]) -> dict[uuid.UUID, tuple[object, ...]]:
    """The stored row of each request (by CMID), waiting up to 15 s for the writer."""
    wanted = {request.cmid.hex: request.cmid for request in requests}
    marks = ",".join("?" * len(wanted))
    sql = (
        "SELECT cmid, machine_name, license_status, protocol, result, hresult, address, "
        f"sku_id FROM activations WHERE cmid IN ({marks})"
    )
    deadline = time.monotonic() + 15
    rows = serve.rows(sql, *wanted)
    while len(rows) < len(wanted) and time.monotonic() < deadline:
        time.sleep(0.02)
        rows = serve.rows(sql, *wanted)
    assert len(rows) == len({row[0] for row in rows}), "a request was stored twice"
    return {wanted[str(row[0])]: row[1:] for row in rows}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(requests=st.lists(fields, min_size=1, max_size=6))
def test_served_equals_recorded_logged_and_counted(host: Serve, requests: list[Fields]) -> None:
    # A fresh CMID per request names it in the store and the log (CMID extremes have their
    # own test below, where the client rows they share are checked too).
    requests = [dataclasses.replace(r, cmid=uuid.uuid4()) for r in requests]
    counted_before = host.metric_sum("kmsgate_activations_total")
    connection = BlockingKmsConnection(host.port)
    try:
        connection.bind()
        answers = [connection.ask(request.message()) for request in requests]
    finally:
        connection.close()
    assert [a.hresult for a in answers] == [expected_hresult(r) for r in requests]

    rows = stored_rows(host, requests)
    assert set(rows) == {r.cmid for r in requests}  # each once, none missing
    for request, answer in zip(requests, answers, strict=True):
        assert rows[request.cmid] == (
            request.machine_name(),
            request.license_status,
            request.version,
            "activated" if answer.served else "refused",
            answer.hresult,
            "127.0.0.1",
            request.sku_id.hex,
        )
    logged = {str(r.get("cmid")): r for r in host.log_records() if r.get("cmid")}
    for request, answer in zip(requests, answers, strict=True):
        line = logged[str(request.cmid)]
        assert line["result"] == ("activated" if answer.served else "refused")
        assert line["machine_name"] == request.machine_name()
    counted = host.metric_sum("kmsgate_activations_total") - counted_before
    assert counted == len(requests)


def test_the_h1_request_is_answered_logged_counted_and_stored(host: Serve) -> None:
    """request_time 2^64-1 once made the log line raise after the answer: no record, reset."""
    request = Fields(version=6, request_time=U64, license_status=U32, n_count=0)
    connection = BlockingKmsConnection(host.port)
    try:
        connection.bind()
        first = connection.ask(request.message())
        # The connection survives: a second request on it is answered too.
        second = connection.ask(Fields(version=4, request_time=0).message())
    finally:
        connection.close()
    assert (first.served, second.served) == (True, True)
    assert stored_rows(host, [request])[request.cmid][:3] == ("LAB-PC", U32, 6)
    lines = [r for r in host.log_records() if r.get("cmid") == str(request.cmid)]
    assert len(lines) == 1
    assert f"client-time=filetime:{U64}" in str(lines[0]["msg"])
    assert "Traceback" not in host.log_text() and "out of range" not in host.log_text()


def test_extreme_cmids_are_recorded_each_time(host: Serve) -> None:
    """The nil and all-ones CMIDs, sent twice each: every request is a row."""
    extremes = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
    before = {
        cmid: int(str(host.rows("SELECT count(*) FROM activations WHERE cmid = ?", cmid.hex)[0][0]))
        for cmid in extremes
    }
    connection = BlockingKmsConnection(host.port)
    try:
        connection.bind()
        answers = [
            connection.ask(Fields(version=version, cmid=cmid).message())
            for cmid in extremes
            for version in (4, 6)
        ]
    finally:
        connection.close()
    assert all(answer.served for answer in answers)
    deadline = time.monotonic() + 15
    while True:
        now = {
            cmid: int(
                str(host.rows("SELECT count(*) FROM activations WHERE cmid = ?", cmid.hex)[0][0])
            )
            for cmid in extremes
        }
        if all(now[c] == before[c] + 2 for c in extremes) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert {c: now[c] - before[c] for c in extremes} == dict.fromkeys(extremes, 2)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


EXTREMES = [
    Fields(version=6, request_time=U64, license_status=U32, n_count=1000),
    Fields(version=5, request_time=0, license_status=2**31, n_count=0),
    Fields(version=4, license_status=U32, raw_name=utf16("nul") + b"\0\0" + b"\xff" * 90),
    Fields(version=6, raw_name=b"\xff" * 128, sku_id=uuid.uuid4(), kms_id=uuid.uuid4()),
    Fields(version=5, raw_name=utf16("\ud800x\U0001f600\u202e") + b"\0\0\x01"),
    Fields(version=4, n_count=U32, license_status=U32),  # refused: N-count above 1000
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "inline"])
async def test_extreme_values_reach_every_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A real host and writer on SQLite (writer process and inline) and PostgreSQL."""
    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        db = server.create_database(f"extremes_{uuid.uuid4().hex[:8]}")
    else:
        db = f"sqlite:///{tmp_path / 'kms.db'}"
    settings_ = ServeSettings.model_validate(
        {
            "listen": ["127.0.0.1:0"],
            "db": db,
            "data_dir": tmp_path,
            "no_web": True,
            "store_flush_interval": 0.01,
            "store_writer": "inline" if backend == "inline" else "process",
            "max_clock_skew": 0,
        }
    )
    async with Node(settings_) as service:
        assert service.host is not None and service.store is not None and service.writer
        store, writer = service.store, service.writer

        def ask_all() -> list[Answer]:
            assert service.host is not None
            connection = BlockingKmsConnection(service.host.port)
            try:
                connection.bind()
                return [connection.ask(r.message()) for r in EXTREMES]
            finally:
                connection.close()

        answers = await asyncio.to_thread(ask_all)
        assert [a.hresult for a in answers] == [expected_hresult(r) for r in EXTREMES]
        deadline = time.monotonic() + 15
        while writer.written < len(EXTREMES) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert (writer.written, writer.dropped, writer.failures) == (len(EXTREMES), 0, 0)
        stored = await stored_activations(store, EXTREMES)
    assert stored == [
        (r.machine_name(), r.license_status, r.version, a.hresult)
        for r, a in zip(EXTREMES, answers, strict=True)
    ]


async def stored_activations(
    store: Store, requests: list[Fields]
) -> list[tuple[str, int | None, int | None, int]]:
    out = []
    for request in requests:
        history = await store.client_history(request.cmid)
        [row] = history.items
        out.append((row.machine_name, row.license_status, row.protocol, row.hresult))
    return out
