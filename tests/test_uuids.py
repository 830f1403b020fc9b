"""uuid_cache: one shared UUID per distinct id, exact in both byte orders, bounded."""

from __future__ import annotations

import random
import uuid

import pytest

from kmsgate.uuids import uuid_cache


@pytest.mark.parametrize("little_endian", [True, False])
def test_ids_stay_exact_and_shared_past_the_bound(little_endian: bool) -> None:
    shared = uuid_cache(8, little_endian=little_endian)
    rng = random.Random(7)
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(50)]
    for _ in range(3):
        for guid in ids:
            raw = guid.bytes_le if little_endian else guid.bytes
            assert shared(raw) == guid
    first = ids[0].bytes_le if little_endian else ids[0].bytes
    assert shared(first) is shared(first)  # one object while cached


def test_a_full_cache_starts_over() -> None:
    shared = uuid_cache(2, little_endian=False)
    a, b, c = (uuid.UUID(int=n) for n in (1, 2, 3))
    kept = shared(a.bytes)
    shared(b.bytes)
    assert shared(a.bytes) is kept  # two fit
    shared(c.bytes)  # the third clears the cache first
    assert shared(a.bytes) is not kept and shared(a.bytes) == a
