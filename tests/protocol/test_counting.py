"""The client count as a genuine host keeps it: distinct machines of 30 days, capped at 2 N."""

from __future__ import annotations

import dataclasses
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.protocol.counting import FILETIME_TICKS_PER_SECOND, MAX_REMEMBERED, SeenClients
from kmsgate.protocol.engine import EngineConfig, KmsEngine, filetime_from_unix
from kmsgate.protocol.messages import DecodedRequest, KmsRequest

DAY = 86400 * FILETIME_TICKS_PER_SECOND
NOW = filetime_from_unix(1_764_000_000)
WINDOWS_APP = uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f")
OFFICE_APP = uuid.UUID("0ff1ce15-a989-479d-af46-f275c6370663")


def request(cmid: uuid.UUID | None = None, n: int = 25, app: uuid.UUID = WINDOWS_APP) -> KmsRequest:
    return KmsRequest(
        major_version=6,
        application_id=app,
        sku_id=uuid.uuid4(),
        kms_counted_id=uuid.uuid4(),
        client_machine_id=cmid or uuid.uuid4(),
        required_client_count=n,
        request_time=NOW,
        machine_name="pc",
    )


def by_application(req: KmsRequest) -> str:
    return "windows" if req.application_id == WINDOWS_APP else "office"


def test_count_grows_by_one_per_new_machine_and_not_for_a_known_one() -> None:
    seen = SeenClients(by_application)
    counts = [seen.observe(request(), NOW + i) for i in range(10)]
    assert counts == list(range(1, 11))
    known = uuid.uuid4()
    assert seen.observe(request(known), NOW + 20) == 11
    assert seen.observe(request(known), NOW + 21) == 11


def test_count_is_capped_at_twice_the_products_n_count() -> None:
    seen = SeenClients(by_application)
    counts = [seen.observe(request(n=5), NOW + i) for i in range(30)]
    assert counts[:10] == list(range(1, 11))
    assert set(counts[10:]) == {10}
    # The same counter reports up to 2 x 25 to a product that needs 25.
    assert seen.observe(request(n=25), NOW + 31) == 31


def test_a_client_charging_the_count_reaches_what_it_needs() -> None:
    # What a charging client does: new CMIDs until the count reaches N, stop when it stalls.
    seen = SeenClients(by_application)
    counts: list[int] = []
    while not counts or counts[-1] < 25:
        counts.append(seen.observe(request(n=25), NOW + len(counts)))
        assert len(counts) < 100, "the count stopped growing"
    assert counts == list(range(1, 26))


def test_counters_are_separate() -> None:
    seen = SeenClients(by_application)
    for i in range(4):
        seen.observe(request(), NOW + i)
    assert seen.observe(request(n=5, app=OFFICE_APP), NOW + 10) == 1
    assert seen.count("windows", NOW + 10) == 4
    assert seen.counters() == ["office", "windows"]
    assert seen.count("never", NOW) == 0


def test_machines_older_than_30_days_no_longer_count() -> None:
    seen = SeenClients(by_application)
    old, recent = uuid.uuid4(), uuid.uuid4()
    seen.observe(request(old), NOW)
    seen.observe(request(recent), NOW + 20 * DAY)
    assert seen.count("windows", NOW + 30 * DAY - 1) == 2
    assert seen.count("windows", NOW + 30 * DAY + 1) == 1
    # A machine that came back is counted from its last visit.
    assert seen.observe(request(old), NOW + 31 * DAY) == 2
    assert seen.count("windows", NOW + 50 * DAY + 1) == 1


def test_memory_is_bounded_per_counter_and_counts_stay_right() -> None:
    seen = SeenClients(by_application, max_remembered=50)
    for i in range(5000):
        assert seen.observe(request(n=25), NOW + i) == min(i + 1, 50)
    assert seen.count("windows", NOW + 5000) == 50
    assert MAX_REMEMBERED == 2 * 1000


def test_only_a_shared_count_collects_changes() -> None:
    alone = SeenClients(by_application)
    for i in range(100):
        alone.observe(request(), NOW + i)
    assert alone.dirty() == []


def test_changes_are_handed_out_once_and_renewals_rarely() -> None:
    seen = SeenClients(by_application, shared=True)
    cmid = uuid.uuid4()
    seen.observe(request(cmid), NOW)
    assert seen.dirty() == [("windows", cmid, NOW)]
    assert seen.dirty() == []
    seen.observe(request(cmid), NOW + 60 * FILETIME_TICKS_PER_SECOND)
    assert seen.dirty() == []  # a renewal within the hour cannot change any count
    later = NOW + 2 * 3600 * FILETIME_TICKS_PER_SECOND
    seen.observe(request(cmid), later)
    assert seen.dirty() == [("windows", cmid, later)]


def test_merged_machines_count_but_are_not_handed_back() -> None:
    seen = SeenClients(by_application, shared=True)
    others = [("windows", uuid.uuid4(), NOW - DAY) for _ in range(3)]
    seen.merge(others)
    seen.merge(others)  # merging twice changes nothing
    assert seen.dirty() == []
    assert seen.observe(request(), NOW) == 4
    # An older time from another node does not move a machine back.
    cmid = others[0][1]
    seen.merge([("windows", cmid, NOW - 40 * DAY)])
    assert seen.count("windows", NOW + 29 * DAY) == 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 90 * 86400)), min_size=1, max_size=120)
)
def test_count_equals_distinct_machines_in_the_window(visits: list[tuple[int, int]]) -> None:
    seen = SeenClients(by_application)
    machines = [uuid.UUID(int=i + 1) for i in range(41)]
    last: dict[uuid.UUID, int] = {}
    t = NOW
    for machine, gap in visits:
        t += gap * FILETIME_TICKS_PER_SECOND
        cmid = machines[machine]
        got = seen.observe(request(cmid, n=1000), t)
        last[cmid] = t
        expected = sum(1 for when in last.values() if when >= t - 30 * DAY)
        assert got == expected


def test_engine_reports_the_seen_count() -> None:
    seen = SeenClients(by_application)
    engine = KmsEngine(EngineConfig(client_count=999), lambda _: "epid", None, seen)
    base = request(n=25)
    for expected in range(1, 4):
        decoded = DecodedRequest(dataclasses.replace(base, client_machine_id=uuid.uuid4()), 6, b"")
        assert engine.respond(decoded, NOW).current_client_count == expected
