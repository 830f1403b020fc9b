"""The shared ring of record drafts: what is appended is read once, in order, within bounds."""

from __future__ import annotations

import marshal
import mmap
import os
import zlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kmsgate.recording.ring import (
    ENTRY_HEADER,
    HEADER_BYTES,
    RecordRing,
    RingCursor,
    RingError,
    ring_bytes,
)


def make_ring(capacity: int = 4096, max_entries: int = 1000) -> tuple[RecordRing, RecordRing]:
    """A producer's and a consumer's view of one fresh ring in shared memory."""
    memory = mmap.mmap(-1, ring_bytes(capacity))
    producer = RecordRing.create(memoryview(memory), max_entries)
    return producer, RecordRing(memoryview(memory))


def test_entries_come_out_once_in_order_and_release_makes_room() -> None:
    producer, consumer = make_ring(capacity=1024, max_entries=100)
    cursor = consumer.head()
    assert producer.append(b"first") and producer.append(b"second")
    assert consumer.read(cursor, 10) == [b"first", b"second"]
    assert consumer.read(cursor, 10) == []
    assert (producer.uncommitted, cursor.count) == (2, 2)
    consumer.release(cursor)
    assert producer.uncommitted == 0 and producer.used_bytes == 0


def test_a_full_ring_refuses_until_released_and_wraps_around() -> None:
    producer, consumer = make_ring(capacity=1024, max_entries=100)
    payload = bytes(range(100))
    appended = 0
    while producer.append(payload):
        appended += 1
    assert appended == 1024 // 112  # 8-byte header, padded to 8: 112 bytes an entry
    cursor = consumer.head()
    assert consumer.read(cursor, 3) == [payload] * 3
    assert not producer.append(payload)  # read is not released: no room yet
    consumer.release(cursor)
    # The freed room is at the start: the next entry wraps past the end's leftover bytes.
    assert producer.append(b"wrapped")
    assert consumer.read(cursor, 100) == [payload] * (appended - 3) + [b"wrapped"]


def test_the_entry_count_bound_holds_before_the_byte_bound() -> None:
    producer, consumer = make_ring(capacity=4096, max_entries=3)
    # Each append tells how many entries wait, its own included; 0 when it found no room.
    assert [producer.append(b"x") for _ in range(4)] == [1, 2, 3, 0]
    cursor = consumer.head()
    consumer.read(cursor, 1)
    consumer.release(cursor)
    assert producer.append(b"y")


def test_a_new_consumer_starts_where_the_last_one_released() -> None:
    producer, first = make_ring()
    for n in range(5):
        producer.append(b"%d" % n)
    cursor = first.head()
    first.read(cursor, 2)
    first.release(cursor)
    first.read(cursor, 2)  # read but not released: the consumer dies here
    successor = RecordRing(memoryview(producer._data.obj))
    again = successor.head()
    assert successor.read(again, 10) == [b"2", b"3", b"4"]


def test_an_entry_larger_than_any_ring_room_or_empty_is_refused_for_good() -> None:
    producer, _ = make_ring(capacity=1024)
    with pytest.raises(RingError):
        producer.append(bytes(1024 // 4))
    with pytest.raises(RingError):
        producer.append(b"")  # no draft is empty: a zero length marks a damaged entry
    assert producer.append(bytes(1024 // 4 - ENTRY_HEADER.size))


def test_a_buffer_without_a_ring_is_refused() -> None:
    with pytest.raises(RingError, match="no record ring"):
        RecordRing(memoryview(bytearray(HEADER_BYTES + 1024)))
    with pytest.raises(RingError):
        RecordRing(memoryview(bytearray(16)))


def test_an_entry_whose_bytes_never_match_is_retried_once_then_skipped_to_the_tail() -> None:
    producer, consumer = make_ring()
    producer.append(b"good")
    producer.append(b"spoiled")
    producer.append(b"after")
    data = producer._data
    second = 16  # "good" takes 8 + 4 bytes, padded to 16
    size, crc = ENTRY_HEADER.unpack_from(data, second)
    assert (size, crc) == (7, zlib.crc32(b"spoiled"))
    data[second + ENTRY_HEADER.size] ^= 0xFF
    cursor = consumer.head()
    assert consumer.read(cursor, 10) == [b"good"]  # maybe not visible yet: wait
    # Still wrong: corrupt. Its length may be torn too, so what follows is lost with it.
    assert consumer.read(cursor, 10) == []
    assert (cursor.corrupt, cursor.count) == (2, 3)
    assert not consumer.unread(cursor)


def ring_operations(max_payload: int, max_size: int) -> st.SearchStrategy[list[tuple[str, object]]]:
    """Appends, reads of up to 20 entries and releases, interleaved at random."""
    return st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=max_payload).map(lambda b: ("append", b)),
            st.integers(min_value=1, max_value=20).map(lambda n: ("read", n)),
            st.just(("release", 0)),
        ),
        max_size=max_size,
    )


@settings(max_examples=300, deadline=None)
@given(ring_operations(max_payload=200, max_size=200))
def test_any_interleaving_delivers_exactly_what_was_accepted(ops: list[tuple[str, object]]) -> None:
    producer, consumer = make_ring(capacity=2048, max_entries=12)
    cursor = RingCursor(0, 0)
    accepted: list[bytes] = []
    delivered: list[bytes] = []
    for op, arg in ops:
        if op == "append":
            assert isinstance(arg, bytes)
            waiting = producer.append(arg)
            if waiting:
                accepted.append(arg)
                assert waiting == producer.uncommitted  # what it reports is what waits
            else:  # refused only when the bounds say so
                assert producer.uncommitted >= 12 or producer.used_bytes + 8 + len(arg) > 2048 - 8
        elif op == "read":
            assert isinstance(arg, int)
            delivered += consumer.read(cursor, arg)
        else:
            consumer.release(cursor)
        assert producer.uncommitted <= 12 and producer.used_bytes <= 2048
    delivered += consumer.read(cursor, 1000)
    assert delivered == accepted


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=20),
    st.binary(min_size=16, max_size=512),
    st.integers(min_value=0, max_value=1000),
)
def test_garbage_in_the_entries_never_breaks_the_reader(
    payloads: list[bytes], garbage: bytes, at: int
) -> None:
    """As after a machine crash wrote back part of the ring: the reader ends at the tail."""
    producer, consumer = make_ring(capacity=1024, max_entries=100)
    for payload in payloads:
        producer.append(payload)
    data = producer._data
    start = at % (1024 - len(garbage) + 1) if len(garbage) <= 1024 else 0
    data[start : start + len(garbage)] = garbage[: 1024 - start]
    cursor = consumer.head()
    got: list[bytes] = []
    for _ in range(len(payloads) + 2):  # a suspect entry is retried once, then skipped
        got += consumer.read(cursor, 100)
    assert not consumer.unread(cursor)
    assert len(got) + cursor.corrupt == len(payloads) == cursor.count
    assert set(got) <= set(payloads)
    consumer.release(cursor)
    assert producer.uncommitted == 0


PURE_RING = os.environ.get("KMSGATE_PURE_PYTHON_RING") == "1"


def test_rings_over_shared_memory_append_in_c() -> None:
    # Built wherever kmsgate installs with a C compiler and zlib's headers (CI does).
    producer, _ = make_ring()
    assert (producer._c_append is None) is PURE_RING


@pytest.mark.skipif(PURE_RING, reason="KMSGATE_PURE_PYTHON_RING=1 turns the C append off")
@settings(max_examples=300, deadline=None)
@given(ring_operations(max_payload=300, max_size=150))
def test_the_c_append_writes_the_python_appends_bytes(ops: list[tuple[str, object]]) -> None:
    """Same operations on two rings, one appending in C: every answer and every byte of the
    two buffers (header words, entries, wrap markers) stay equal."""
    memories = [mmap.mmap(-1, ring_bytes(2048)) for _ in range(2)]
    producers = [
        RecordRing.create(memoryview(memory), 12) for memory in memories
    ]  # create attaches with the C append when built
    python = RecordRing(memoryview(memories[1]), accelerated=False)
    c_side, python_side = producers[0], python
    assert c_side._c_append is not None and python_side._c_append is None
    cursors = [RingCursor(0, 0), RingCursor(0, 0)]
    consumers = [RecordRing(memoryview(memory)) for memory in memories]
    for op, arg in ops:
        if op == "append":
            assert isinstance(arg, bytes)
            assert c_side.append(arg) == python_side.append(arg)
        elif op == "read":
            assert isinstance(arg, int)
            assert consumers[0].read(cursors[0], arg) == consumers[1].read(cursors[1], arg)
        else:
            for consumer, cursor in zip(consumers, cursors, strict=True):
                consumer.release(cursor)
        assert memories[0][:] == memories[1][:]
        assert (c_side.appended, c_side.tail) == (python_side.appended, python_side.tail)


def test_the_c_append_refuses_what_it_cannot_hold() -> None:
    from kmsgate.recording import _ring

    memory = mmap.mmap(-1, ring_bytes(1024))
    RecordRing.create(memoryview(memory), 10)
    whole = memoryview(memory)
    with pytest.raises(ValueError, match="never hold"):
        _ring.append(whole, 0, 0, b"")
    with pytest.raises(ValueError, match="never hold"):
        _ring.append(whole, 0, 0, bytes(2000))
    with pytest.raises(ValueError, match="aligned"):
        _ring.append(whole[1:], 0, 0, b"x")
    with pytest.raises(BufferError):
        _ring.append(bytes(memory), 0, 0, b"x")  # read-only


@pytest.mark.skipif(PURE_RING, reason="KMSGATE_PURE_PYTHON_RING=1 turns the C append off")
def test_the_c_append_wraps_around_as_the_python_one() -> None:
    memories = [mmap.mmap(-1, ring_bytes(2048)) for _ in range(2)]
    for memory in memories:
        RecordRing.create(memoryview(memory), 12)
    c_side = RecordRing(memoryview(memories[0]))
    python_side = RecordRing(memoryview(memories[1]), accelerated=False)
    consumers = [RecordRing(memoryview(memory)) for memory in memories]
    cursors = [RingCursor(0, 0), RingCursor(0, 0)]
    wraps = 0
    for index in range(200):
        payload = bytes([index % 251]) * (1 + index * 37 % 400)
        before = c_side.tail
        assert c_side.append(payload) == python_side.append(payload) > 0
        wraps += c_side.tail % 2048 < before % 2048
        assert memories[0][:] == memories[1][:]
        for consumer, cursor in zip(consumers, cursors, strict=True):
            assert consumer.read(cursor, 10) == [payload]
            consumer.release(cursor)
    assert wraps > 20


_values = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.text(max_size=40),  # surrogates included: marshal itself encodes those
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),  # not ints to marshal: left to it
    st.floats(allow_nan=False),
)


@pytest.mark.skipif(PURE_RING, reason="KMSGATE_PURE_PYTHON_RING=1 turns the C append off")
@settings(max_examples=1000, deadline=None)
@given(st.lists(_values, max_size=20).map(tuple))
# Each bound on its own: one value beyond 64 bits sends the whole draft through marshal.
@example(tuple(2**k for k in range(63)) + tuple(-(2**k) for k in range(64)))
@example((2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, -(2**63)))
@example((2**64 - 1, 2**64, -(2**63) - 1))
@example(("é", "\ud800", "", b"", None, 0, -1))
def test_a_draft_encoded_in_the_ring_is_what_marshal_writes(draft: tuple[object, ...]) -> None:
    """append_draft encodes a draft's values itself: the entry must be marshal.dumps(draft, 2)
    byte for byte, whatever path took it (values it does not encode go through marshal)."""
    memory = mmap.mmap(-1, ring_bytes(8192))
    ring = RecordRing.create(memoryview(memory), 100)
    consumer = RecordRing(memoryview(memory))
    assert ring._c_append_draft is not None
    assert ring.append_draft(draft) == 1
    [entry] = consumer.read(RingCursor(0, 0), 10)
    assert entry == marshal.dumps(draft, 2)


@pytest.mark.skipif(PURE_RING, reason="KMSGATE_PURE_PYTHON_RING=1 turns the C append off")
def test_a_draft_the_ring_cannot_take_fails_as_through_marshal() -> None:
    memory = mmap.mmap(-1, ring_bytes(1024))
    ring = RecordRing.create(memoryview(memory), 2)
    with pytest.raises(ValueError, match="unmarshallable"):
        ring.append_draft((1, object()))
    with pytest.raises(RingError):
        ring.append_draft((b"x" * 2000,))  # beyond any entry
    assert ring.append_draft((1,)) and ring.append_draft((2,))
    assert ring.append_draft((3,)) == 0  # max_entries reached: no room now
    assert ring.uncommitted == 2


@pytest.mark.skipif(PURE_RING, reason="KMSGATE_PURE_PYTHON_RING=1 turns the C append off")
def test_a_record_draft_is_encoded_in_c() -> None:
    from kmsgate.recording import _ring

    ids = bytes(16)
    draft = (1_764_000_000_000_000, ids, "host-1", "192.0.2.7", ids, ids, "Windows 11 Pro",
             ids, "Windows", 2, 6, "activated", 0, "06401-...", "n1")  # fmt: skip
    memory = mmap.mmap(-1, ring_bytes(4096))
    RecordRing.create(memoryview(memory), 10)
    assert _ring.append_draft(memoryview(memory), 0, 0, draft, 1000) > 0  # not left to marshal
    assert _ring.append_draft(memoryview(memory), 0, 0, (True,), 1000) == -1
    assert _ring.append_draft(memoryview(memory), 0, 0, (-(2**31), 2**63 - 1), 1000) > 0
    assert _ring.append_draft(memoryview(memory), 0, 0, draft, 100) == -1  # beyond max_payload
