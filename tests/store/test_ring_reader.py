"""RingReader with the entries this process appended known: taken back without decoding,
and exactly the ring's records whatever was skipped, left over or stale."""

from __future__ import annotations

import collections
import marshal
import mmap
from typing import cast

from kmsgate.recording.ring import ENTRY_HEADER, RecordRing, ring_bytes
from kmsgate.recording.ring_reader import KnownEntries, RingReader
from kmsgate.recording.writer import RecordWriter
from kmsgate.store.drafts import RecordDraft
from tests.store.test_writer_process import drafts


class Taker:
    """The RecordWriter side a RingReader needs: room, a queue, counters."""

    def __init__(self) -> None:
        self.max_queue = 1000
        self.taken: list[RecordDraft] = []
        self.written = 0
        self.dropped = 0

    @property
    def depth(self) -> int:
        return len(self.taken) - self.written

    def submit(self, draft: RecordDraft) -> bool:
        self.taken.append(draft)
        return True


def make(known: KnownEntries | None) -> tuple[RecordRing, RingReader, Taker]:
    memory = mmap.mmap(-1, ring_bytes(1 << 16))
    ring = RecordRing.create(memoryview(memory), 1000)
    taker = Taker()
    return ring, RingReader(ring, cast(RecordWriter, taker), "n", known), taker


def append(ring: RecordRing, known: KnownEntries | None, draft: RecordDraft) -> None:
    """What RingHandover._append does, the inline writer's _appended included."""
    payload = marshal.dumps(draft)
    assert ring.append(payload)
    if known is not None:
        known.append((ring.appended, payload, draft))


def test_known_entries_are_the_appended_drafts_themselves() -> None:
    known: KnownEntries = collections.deque()
    ring, reader, taker = make(known)
    made = drafts(30)
    for draft in made:
        append(ring, known, draft)
    reader.drain()
    assert taker.taken == made
    # The very objects: nothing was decoded (a decoded draft would be an equal copy).
    assert all(took is draft for took, draft in zip(taker.taken, made, strict=True))
    assert not known


def test_entries_left_by_an_earlier_run_are_decoded_then_known_ones_are_not() -> None:
    known: KnownEntries = collections.deque()
    ring, reader, taker = make(known)
    left, fresh = drafts(5), drafts(5, start=2_000_000_000_000_000)
    for draft in left:
        append(ring, None, draft)  # appended by a process gone since: unknown here
    for draft in fresh:
        append(ring, known, draft)
    reader.drain()
    assert taker.taken == left + fresh
    assert not any(took is draft for took, draft in zip(taker.taken[:5], left, strict=True))
    assert all(took is draft for took, draft in zip(taker.taken[5:], fresh, strict=True))


def test_known_entries_skipped_as_corrupt_are_forgotten_not_misplaced() -> None:
    known: KnownEntries = collections.deque()
    ring, reader, taker = make(known)
    made = drafts(6)
    for draft in made[:5]:
        append(ring, known, draft)
    # Spoil the third entry's bytes: the reader stops before it, then skips to the tail.
    offset = 0
    for _ in range(2):
        size, _crc = ENTRY_HEADER.unpack_from(ring._data, offset)
        offset += -(-(ENTRY_HEADER.size + size) // 8) * 8
    ring._data[offset + ENTRY_HEADER.size] ^= 0xFF
    reader.drain()
    assert taker.taken == made[:2]
    reader.drain()  # confirmed corrupt: entries 3 to 5 are lost with it
    assert reader.malformed == 3
    append(ring, known, made[5])
    reader.drain()
    assert taker.taken == [*made[:2], made[5]]
    assert taker.taken[2] is made[5]
    assert not known


def test_a_known_entry_whose_bytes_differ_is_read_from_the_ring() -> None:
    known: KnownEntries = collections.deque()
    ring, reader, taker = make(known)
    real, stale = drafts(2)
    append(ring, None, real)
    known.append((ring.appended, marshal.dumps(stale), stale))
    reader.drain()
    assert taker.taken == [real]
    assert taker.taken[0] is not real  # decoded from the ring's bytes
