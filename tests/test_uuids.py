"""UuidCache: one shared UUID per distinct id, exact in both byte orders, bounded; and the
fast constructors from bytes and from an int."""

from __future__ import annotations

import pickle
import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmsgate.uuids import (
    UuidCache,
    uuid_bytes,
    uuid_bytes_le,
    uuid_from_bytes,
    uuid_from_bytes_le,
    uuid_from_int,
)


@pytest.mark.parametrize("little_endian", [True, False])
def test_ids_stay_exact_and_shared_past_the_bound(little_endian: bool) -> None:
    shared = UuidCache(8, little_endian=little_endian).get
    rng = random.Random(7)
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(50)]
    for _ in range(3):
        for guid in ids:
            raw = guid.bytes_le if little_endian else guid.bytes
            assert shared(raw) == guid
    first = ids[0].bytes_le if little_endian else ids[0].bytes
    assert shared(first) is shared(first)  # one object while cached


def test_a_full_cache_starts_over() -> None:
    shared = UuidCache(2, little_endian=False).get
    a, b, c = (uuid.UUID(int=n) for n in (1, 2, 3))
    kept = shared(a.bytes)
    shared(b.bytes)
    assert shared(a.bytes) is kept  # two fit
    shared(c.bytes)  # the third clears the cache first
    assert shared(a.bytes) is not kept and shared(a.bytes) == a


@given(st.binary(min_size=16, max_size=16))
def test_the_fast_constructor_builds_the_same_uuid(raw: bytes) -> None:
    built, reference = uuid_from_bytes_le(raw), uuid.UUID(bytes_le=raw)
    assert built == reference and hash(built) == hash(reference)
    assert (built.bytes_le, built.int, str(built), repr(built)) == (
        raw,
        reference.int,
        str(reference),
        repr(reference),
    )
    assert built.is_safe is reference.is_safe
    assert pickle.loads(pickle.dumps(built)) == reference
    assert uuid_bytes_le(built) == uuid_bytes_le(reference) == raw
    assert uuid_bytes(built) == uuid_bytes(reference) == reference.bytes
    with pytest.raises(TypeError):
        built.int = 0  # type: ignore[misc]  # immutable like any UUID


@given(st.binary(min_size=16, max_size=16))
def test_the_big_endian_constructor_builds_the_same_uuid(raw: bytes) -> None:
    built, reference = uuid_from_bytes(raw), uuid.UUID(bytes=raw)
    assert built == reference and hash(built) == hash(reference)
    assert (built.bytes, str(built), built.is_safe) == (raw, str(reference), reference.is_safe)
    assert pickle.loads(pickle.dumps(built)) == reference


@given(st.integers(0, 2**128 - 1))
def test_the_int_constructor_builds_the_same_uuid(number: int) -> None:
    built, reference = uuid_from_int(number), uuid.UUID(int=number)
    assert built == reference and hash(built) == hash(reference)
    assert (built.bytes, str(built), built.is_safe) == (
        reference.bytes,
        str(reference),
        reference.is_safe,
    )


@pytest.mark.parametrize("size", [0, 15, 17])
def test_the_fast_constructors_refuse_other_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="16"):
        uuid_from_bytes_le(bytes(size))
    with pytest.raises(ValueError, match="16"):
        uuid_from_bytes(bytes(size))
