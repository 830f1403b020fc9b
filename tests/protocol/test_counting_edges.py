"""Client-count edges mutation testing found unasserted: N-count 0, renewals, hand-backs."""

from __future__ import annotations

import uuid

from kmsgate.protocol.counting import FILETIME_TICKS_PER_SECOND, MAX_PENDING, SeenClients
from tests.protocol.test_counting import NOW, by_application, request

DAY = 86400 * FILETIME_TICKS_PER_SECOND
HOUR = 3600 * FILETIME_TICKS_PER_SECOND


def test_a_request_without_an_n_count_sees_every_machine_uncapped() -> None:
    seen = SeenClients(by_application)
    counts = [seen.observe(request(n=0), NOW + i) for i in range(5)]
    assert counts == [1, 2, 3, 4, 5]
    assert seen.observe(request(n=1), NOW + 9) == 2  # capped at 2 N again


def test_thousands_of_renewals_of_a_few_machines_keep_the_count_and_the_expiry() -> None:
    seen = SeenClients(by_application)
    machines = [uuid.uuid4() for _ in range(3)]
    for i in range(3000):  # far past the point where stale heap entries are compacted
        assert seen.observe(request(machines[i % 3]), NOW + i) == min(i + 1, 3)
    last_seen = NOW + 2999
    assert seen.count("windows", last_seen + 30 * DAY - 3000) == 3
    # Each machine leaves the window exactly 30 days after its own last renewal.
    assert seen.count("windows", NOW + 2997 + 30 * DAY + 1) == 2
    assert seen.count("windows", last_seen + 30 * DAY + 1) == 0


def test_merged_machines_are_not_handed_out_as_changes() -> None:
    seen = SeenClients(by_application, shared=True)
    seen.merge([("windows", uuid.uuid4(), NOW)])
    assert seen.dirty() == [] and seen.count("windows", NOW) == 1


def test_changes_a_store_did_not_take_come_back_once() -> None:
    seen = SeenClients(by_application, shared=True)
    a, b = uuid.uuid4(), uuid.uuid4()
    seen.mark_dirty([("windows", a, NOW), ("office", b, NOW + 5)])
    assert sorted(seen.dirty()) == sorted([("windows", a, NOW), ("office", b, NOW + 5)])
    assert seen.dirty() == []


def test_a_handed_back_change_never_replaces_a_newer_one() -> None:
    seen = SeenClients(by_application, shared=True)
    cmid = uuid.uuid4()
    seen.observe(request(cmid), NOW + HOUR)
    seen.mark_dirty([("windows", cmid, NOW)])
    assert seen.dirty() == [("windows", cmid, NOW + HOUR)]
    seen.mark_dirty([("windows", cmid, NOW), ("windows", cmid, NOW + 2 * HOUR)])
    assert seen.dirty() == [("windows", cmid, NOW + 2 * HOUR)]


def test_handed_back_changes_are_bounded() -> None:
    seen = SeenClients(by_application, shared=True)
    seen.mark_dirty(("windows", uuid.UUID(int=i), NOW) for i in range(MAX_PENDING + 10))
    assert len(seen.dirty()) == MAX_PENDING


def test_a_renewal_exactly_an_hour_later_is_written_back() -> None:
    seen = SeenClients(by_application, shared=True)
    cmid = uuid.uuid4()
    seen.observe(request(cmid), NOW)
    assert seen.dirty() == [("windows", cmid, NOW)]
    seen.observe(request(cmid), NOW + HOUR - 1)
    assert seen.dirty() == []
    seen.observe(request(cmid), NOW + 2 * HOUR - 1)
    assert seen.dirty() == [("windows", cmid, NOW + 2 * HOUR - 1)]


def test_a_change_at_time_zero_can_be_handed_back() -> None:
    seen = SeenClients(by_application, shared=True)
    cmid = uuid.uuid4()
    seen.mark_dirty([("windows", cmid, 0)])
    assert seen.dirty() == [("windows", cmid, 0)]


def test_when_pending_changes_are_full_only_known_machines_are_updated() -> None:
    seen = SeenClients(by_application, shared=True)
    known = uuid.UUID(int=0)
    seen.mark_dirty(("windows", uuid.UUID(int=i), NOW) for i in range(MAX_PENDING))
    seen.observe(request(uuid.uuid4()), NOW + DAY)  # a new machine: counted, not queued
    seen.observe(request(known), NOW + DAY)  # a queued one: its newer time replaces the old
    pending = {(name, cmid): when for name, cmid, when in seen.dirty()}
    assert len(pending) == MAX_PENDING
    assert pending[("windows", known)] == NOW + DAY
    assert seen.count("windows", NOW + DAY) == 2
