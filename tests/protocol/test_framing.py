"""PduFramer against a byte-at-a-time model: whatever the reads' sizes, the same PDUs."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmsgate.protocol import rpc
from kmsgate.protocol.errors import FramingError
from kmsgate.protocol.framing import PduFramer


def pdu(length: int, fill: int) -> bytes:
    """A PDU of `length` bytes whose header passes the framer's checks."""
    header = struct.pack("<BBBB4sHHI", 5, 0, 0, 3, b"\x10\x00\x00\x00", length, 0, fill)
    return header + bytes([fill & 0xFF]) * (length - rpc.HEADER_SIZE)


pdus = st.lists(
    st.builds(pdu, st.integers(rpc.HEADER_SIZE, 400), st.integers(0, 2**32 - 1)),
    max_size=8,
)
# How the stream is cut into reads: a cut after each of these offsets (sorted, deduplicated).
cuts = st.lists(st.integers(0, 3300), max_size=12)


def reads_of(stream: bytes, offsets: list[int]) -> list[bytes]:
    edges = sorted({0, len(stream), *(o for o in offsets if o < len(stream))})
    return [stream[start:end] for start, end in itertools.pairwise(edges)]


def framed(framer: PduFramer, reads: list[bytes]) -> list[bytes]:
    """Every PDU the framer gives, taken after each read as a session takes them."""
    out: list[bytes] = []
    for data in reads:
        framer.feed(data)
        while (raw := framer.next_pdu()) is not None:
            out.append(raw)
    return out


@given(pdus, cuts)
def test_any_cutting_of_a_stream_gives_its_pdus_in_order(
    items: list[bytes], offsets: list[int]
) -> None:
    stream = b"".join(items)
    reads = reads_of(stream, offsets)
    framer = PduFramer()
    assert framed(framer, reads) == items
    assert framer.buffered == 0
    # Each whole PDU is bytes of its own, whatever read carried it.
    assert all(type(raw) is bytes for raw in framed(PduFramer(), reads))


@given(pdus, st.integers(1, 399), cuts)
def test_what_is_held_is_counted_until_it_completes(
    items: list[bytes], short: int, offsets: list[int]
) -> None:
    tail = pdu(400, 7)[:short]
    stream = b"".join(items) + tail
    framer = PduFramer()
    assert framed(framer, reads_of(stream, offsets)) == items
    assert framer.buffered == len(tail)
    framer.feed(pdu(400, 7)[short:])
    assert framer.next_pdu() == pdu(400, 7)
    assert framer.buffered == 0


def test_one_read_holding_exactly_one_pdu_is_given_back_as_it_came() -> None:
    raw = pdu(120, 1)
    framer = PduFramer()
    framer.feed(raw)
    assert framer.buffered == 120
    assert framer.next_pdu() is raw
    assert framer.buffered == 0


@pytest.mark.parametrize("after_a_good_one", [False, True])
def test_a_bad_header_drops_everything_held(after_a_good_one: bool) -> None:
    framer = PduFramer(max_pdu_size=200)
    if after_a_good_one:
        framer.feed(pdu(40, 9))
        assert framer.next_pdu() == pdu(40, 9)
    framer.feed(b"\x04" + pdu(30, 1)[1:] + pdu(30, 2))  # RPC version 4, then a good one
    with pytest.raises(FramingError, match="version"):
        framer.next_pdu()
    assert framer.buffered == 0
    framer.feed(pdu(300, 2)[:16])
    with pytest.raises(FramingError, match="too large"):
        framer.next_pdu()
    assert framer.buffered == 0


def test_clear_forgets_a_read_taken_whole_and_a_partial_one() -> None:
    for data in (pdu(50, 1), pdu(50, 1)[:20], pdu(50, 1) + pdu(50, 2)[:5]):
        framer = PduFramer()
        framer.feed(data)
        framer.clear()
        assert framer.buffered == 0
        assert framer.next_pdu() is None
