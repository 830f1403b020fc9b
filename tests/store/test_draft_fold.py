"""_draft_fold.c: the one-pass fold of raw rows gives exactly what the Python fold gives."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.store import activation_fold
from kmsgate.store.activation_batch import _machine_months
from kmsgate.store.activation_fold import SQLITE_RAW_VALUES, FoldedBatch, fold
from kmsgate.store.drafts import RecordDraft, draft_of
from tests.support.records import make_record

pytestmark = pytest.mark.skipif(
    activation_fold.DRAFT_FOLD is None, reason=f"no C fold: {activation_fold.DRAFT_FOLD_BUILD}"
)

CMIDS = [uuid.UUID(int=n * 0x1111_0000_0000_0000_0000_0000_0001) for n in range(1, 5)]
SKUS = [uuid.UUID(int=n * 0x2222_0000_0000_0000_0000_0000_0003) for n in range(1, 3)]
# Times around edges the fold cuts at: an hour, a day, a month, a year, and the range's ends.
EDGES = [
    datetime(2026, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 0, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1, 1, 1, 1, 0, tzinfo=UTC),  # the offsets below keep these two in range
    datetime(9999, 12, 30, 23, 0, tzinfo=UTC),
]

drafts_strategy = st.lists(
    st.builds(
        lambda edge, seconds, cmid, sku, node, family, name, result, protocol: draft_of(
            make_record(
                time=edge + timedelta(seconds=seconds),
                client_machine_id=cmid,
                sku_id=sku,
                node=node,
                product_family=family,
                sku_name=name,
                result=result,
                hresult=0 if result == "activated" else 5,
                protocol=protocol,
            )
        ),
        st.sampled_from(EDGES),
        st.sampled_from([-3600, -2, -1, 0, 0, 0, 1, 2, 86_400]),
        st.sampled_from([*CMIDS, CMIDS[0], CMIDS[0], None]),
        st.sampled_from([*SKUS, SKUS[0], None]),
        st.sampled_from(["node-a", "node-a", "node-b"]),
        st.sampled_from(["Windows", "Windows", "Office"]),
        st.sampled_from(["Windows 10/11 Pro", "Windows 10/11 Pro", "Office LTSC 2021"]),
        st.sampled_from(["activated", "activated", "refused", "unknown-product"]),
        st.sampled_from([6, 6, 4, None]),
    ),
    min_size=1,
    max_size=40,
)


def python_fold(drafts: list[RecordDraft]) -> FoldedBatch:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(activation_fold, "DRAFT_FOLD", None)
        return fold(drafts, SQLITE_RAW_VALUES)


def licence_rows(batch: FoldedBatch) -> set[tuple[str, str, str, str]]:
    if batch.machine_months is None:
        return set(_machine_months(batch.activation_rows, raw=True))
    return {(*key, name) for key, name in batch.machine_months.items()}


def assert_same(got: FoldedBatch, want: FoldedBatch) -> None:
    assert got.activation_rows == want.activation_rows
    assert got.client_rows() == want.client_rows()
    assert {cmid: f.latest for cmid, f in got.clients.items()} == {
        cmid: f.latest for cmid, f in want.clients.items()
    }
    assert got.counters == want.counters
    assert got.hours == want.hours
    assert got.products == want.products
    assert licence_rows(got) == licence_rows(want)


@settings(max_examples=300, deadline=None)
@given(drafts=drafts_strategy, shuffle=st.randoms(use_true_random=False))
def test_the_c_fold_equals_the_python_fold(
    drafts: list[RecordDraft], shuffle: random.Random
) -> None:
    # In time order (runs of equal keys, as batches come) and shuffled (runs broken up).
    ordered = sorted(drafts, key=lambda d: d[0])
    scrambled = list(drafts)
    shuffle.shuffle(scrambled)
    for batch in (ordered, scrambled):
        got = fold(batch, SQLITE_RAW_VALUES)
        assert got.machine_months is not None  # the C fold ran
        assert_same(got, python_fold(batch))


@settings(max_examples=60, deadline=None)
@given(drafts=drafts_strategy, cut=st.integers(1, 39))
def test_c_folds_in_parts_equal_one_fold(drafts: list[RecordDraft], cut: int) -> None:
    cut = min(cut, max(1, len(drafts) - 1))
    whole = fold(drafts, SQLITE_RAW_VALUES)
    parts = fold(drafts[:cut], SQLITE_RAW_VALUES)
    parts.extend(fold(drafts[cut:], SQLITE_RAW_VALUES))
    assert_same(parts, whole)


def test_a_malformed_draft_is_refused() -> None:
    good = draft_of(make_record())
    for bad in ([good, good[:14]], [good, (*good[:-1], "node", "extra")], [(None, *good[1:])]):
        with pytest.raises(TypeError):
            fold(bad, SQLITE_RAW_VALUES)
    with pytest.raises(OverflowError):
        fold([(1 << 70, *good[1:])], SQLITE_RAW_VALUES)


def test_folding_keeps_no_memory() -> None:
    # Every object the C pass makes is released with its batch (reference counts right).
    drafts = [
        draft_of(
            make_record(client_machine_id=CMIDS[i % 3], result=("activated", "refused")[i % 2])
        )
        for i in range(200)
    ]
    for _ in range(50):
        fold(drafts, SQLITE_RAW_VALUES)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(2000):
            fold(drafts, SQLITE_RAW_VALUES)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 64 * 1024, grown


@pytest.mark.parametrize(
    ("switch", "said"),
    [("0", "folded in C (abi3)"), ("1", "folded in Python (KMSGATE_PURE_PYTHON_DRAFT_FOLD=1)")],
)
def test_the_start_up_line_names_the_fold_in_use(switch: str, said: str) -> None:
    program = (
        "from kmsgate.store.activation_batch import describe_sqlite_writer\n"
        "from kmsgate.store.sqlite_rows import rows_in_c\n"
        "print(rows_in_c(), describe_sqlite_writer())\n"
    )
    env = {**os.environ, "KMSGATE_PURE_PYTHON_DRAFT_FOLD": switch}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    in_c, line = done.stdout.strip().split(" ", 1)
    if in_c != "True":
        pytest.skip("rows are not bound from C here")
    assert line.endswith(said), line
