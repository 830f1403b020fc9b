"""ePID and HWID formatting, parsing and generation (spec §15)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.protocol.epid import (
    VALID_LCIDS,
    Epid,
    parse_epid,
    parse_hwid,
    random_epid,
    random_hwid,
    random_key_id,
)

DEFAULT_WINDOWS_EPID = "03612-00206-556-123727-03-1033-17763.0000-2972018"


@dataclass(frozen=True)
class Csvlk:
    group_id: int
    key_id_blocks: tuple[tuple[int, int], ...]
    release_date: date


@dataclass(frozen=True)
class HostBuild:
    build: int
    platform_id: int
    release_date: date


VLMCSD_BUILDS = [
    HostBuild(17763, 3612, date(2018, 10, 2)),
    HostBuild(14393, 3612, date(2016, 8, 2)),
    HostBuild(9600, 6401, date(2013, 10, 18)),
    HostBuild(9200, 5426, date(2012, 10, 26)),
    HostBuild(7601, 55041, date(2011, 2, 22)),
    HostBuild(6002, 55041, date(2009, 5, 26)),
]
OFFICE_2019 = Csvlk(206, ((666_000_000, 685_999_999),), date(2018, 9, 24))
CHINA_GOV = Csvlk(3858, ((0, 14_999_999),), date(2017, 4, 11))
# Windows Server 2022's key ids 20000-29999 are a hole between two valid blocks.
SERVER_2022 = Csvlk(4573, ((0, 19_999), (30_000, 20_029_999)), date(2021, 9, 1))

epid_values = st.builds(
    Epid,
    platform_id=st.integers(0, 99_999),
    group_id=st.integers(0, 99_999),
    key_id=st.integers(0, 999_999_999),
    lcid=st.sampled_from(VALID_LCIDS),
    build=st.integers(0, 99_999),
    activation_date=st.dates(date(1990, 1, 1), date(9999, 12, 31)),
    channel=st.integers(0, 99),
)


# --- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epid", "text"),
    [
        (Epid(3612, 206, 556_123_727, 1033, 17763, date(2018, 10, 24)), DEFAULT_WINDOWS_EPID),
        (
            Epid(5426, 206, 557_488_431, 8251, 9200, date(2025, 7, 19)),
            "05426-00206-557-488431-03-8251-9200.0000-2002025",
        ),
        (
            Epid(55041, 96, 15_000_042, 1049, 7601, date(2011, 1, 5)),
            "55041-00096-015-000042-03-1049-7601.0000-0052011",
        ),
        (
            Epid(3612, 3858, 53_089_516, 16385, 6002, date(2020, 12, 31)),
            "03612-03858-053-089516-03-16385-6002.0000-3662020",
        ),
        (
            Epid(0, 0, 0, 1025, 0, date(2019, 1, 1), channel=0),
            "00000-00000-000-000000-00-1025-0.0000-0012019",
        ),
    ],
    ids=["vlmcsd_default", "spec_example", "zero_padding", "leap_day_366", "all_zero"],
)
def test_epid_formatting(epid: Epid, text: str) -> None:
    assert str(epid) == text
    assert parse_epid(text) == epid


def test_epid_length_is_normally_48_or_49_characters() -> None:
    assert len(DEFAULT_WINDOWS_EPID) == 49
    assert len("05426-00206-557-488431-03-8251-9200.0000-2002025") == 48


@settings(max_examples=300, deadline=None)
@given(epid_values)
def test_parse_epid_round_trips(epid: Epid) -> None:
    text = str(epid)
    assert text.isascii()
    assert parse_epid(text) == epid
    assert str(parse_epid(text)) == text


# --- parsing errors --------------------------------------------------------------------------

INVALID_EPIDS = {
    "empty": "",
    "random_text": "not an epid",
    "short_platform": "3612-00206-556-123727-03-1033-17763.0000-2972018",
    "long_group": "03612-000206-556-123727-03-1033-17763.0000-2972018",
    "key_split_wrong": "03612-00206-5561-23727-03-1033-17763.0000-2972018",
    "letters": "03612-00206-556-12372A-03-1033-17763.0000-2972018",
    "missing_0000": "03612-00206-556-123727-03-1033-17763-2972018",
    "wrong_separator": "03612_00206-556-123727-03-1033-17763.0000-2972018",
    "day_000": "03612-00206-556-123727-03-1033-17763.0000-0002018",
    "day_366_non_leap": "03612-00206-556-123727-03-1033-17763.0000-3662018",
    "day_367": "03612-00206-556-123727-03-1033-17763.0000-3672020",
    "year_1989": "03612-00206-556-123727-03-1033-17763.0000-0011989",
    "unknown_lcid": "03612-00206-556-123727-03-9999-17763.0000-2972018",
    "six_digit_build": "03612-00206-556-123727-03-1033-177630.0000-2972018",
    "suffix": DEFAULT_WINDOWS_EPID + "0",
    "prefix": " " + DEFAULT_WINDOWS_EPID,
}


@pytest.mark.parametrize("text", INVALID_EPIDS.values(), ids=INVALID_EPIDS.keys())
def test_invalid_epids_are_rejected_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match="ePID") as info:
        parse_epid(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [DEFAULT_WINDOWS_EPID + "\n", DEFAULT_WINDOWS_EPID.replace("1", "\u0661")],
    ids=["trailing_newline", "arabic_indic_digits"],
)
def test_epid_with_non_wire_characters_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_epid(text)


# --- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize(
    "csvlk", [OFFICE_2019, CHINA_GOV, SERVER_2022], ids=["office2019", "china_gov", "server2022"]
)
def test_random_epid_stays_within_key_blocks_and_dates(seed: int, csvlk: Csvlk) -> None:
    host = VLMCSD_BUILDS[seed % len(VLMCSD_BUILDS)]
    today = date(2026, 11, 22)
    epid = random_epid(csvlk, host, 1049, random.Random(seed), today)
    assert any(start <= epid.key_id <= end for start, end in csvlk.key_id_blocks)
    assert max(csvlk.release_date, host.release_date) <= epid.activation_date <= today
    assert (epid.platform_id, epid.group_id, epid.build, epid.lcid, epid.channel) == (
        host.platform_id,
        csvlk.group_id,
        host.build,
        1049,
        3,
    )
    assert parse_epid(str(epid)) == epid


def test_random_epid_is_reproducible_and_varies_with_the_seed() -> None:
    args = (OFFICE_2019, VLMCSD_BUILDS[0], 1033)
    today = date(2026, 1, 1)
    first = [random_epid(*args, random.Random(seed), today) for seed in range(20)]
    again = [random_epid(*args, random.Random(seed), today) for seed in range(20)]
    assert first == again
    assert len({e.key_id for e in first}) > 15 and len({e.activation_date for e in first}) > 10


def test_random_epid_with_a_single_key_and_release_day() -> None:
    csvlk = Csvlk(206, ((551_000_000, 551_000_000),), date(2020, 5, 5))
    epid = random_epid(csvlk, VLMCSD_BUILDS[0], 1033, random.Random(0), date(2020, 5, 5))
    assert (epid.key_id, epid.activation_date) == (551_000_000, date(2020, 5, 5))


def test_random_epid_dates_cover_the_whole_span() -> None:
    csvlk = Csvlk(206, ((0, 10),), date(2024, 1, 1))
    today = csvlk.release_date + timedelta(days=3)
    seen = {
        random_epid(csvlk, VLMCSD_BUILDS[0], 1033, random.Random(s), today).activation_date
        for s in range(100)
    }
    assert seen == {csvlk.release_date + timedelta(days=d) for d in range(4)}


def test_key_ids_come_from_every_block_and_never_from_a_hole() -> None:
    blocks = ((0, 2), (10, 11), (20, 20))
    rng = random.Random(7)
    drawn = [random_key_id(blocks, rng) for _ in range(600)]
    assert set(drawn) == {0, 1, 2, 10, 11, 20}
    # Uniform over the union: every key id is about equally likely (6 ids, 600 draws).
    assert all(60 <= drawn.count(k) <= 140 for k in set(drawn))


def test_key_id_draw_over_the_server_2022_hole() -> None:
    rng = random.Random(1)
    hole = [k for k in (random_key_id(SERVER_2022.key_id_blocks, rng) for _ in range(20_000))
            if 20_000 <= k <= 29_999]  # fmt: skip
    assert hole == []


def test_key_id_draw_needs_a_block() -> None:
    with pytest.raises(ValueError, match="block"):
        random_key_id((), random.Random(0))


@pytest.mark.parametrize("key_id", [15_000_007, 14_999_999, 0, 999_999_999, 1_000_000])
def test_epid_key_id_splits_into_millions_and_rest(key_id: int) -> None:
    # 15 000 007 must print as 015-000007: a property test hits such values rarely.
    epid = Epid(3612, 206, key_id, 1033, 26100, date(2024, 11, 1))
    text = str(epid)
    assert text[12:22] == f"{key_id // 1_000_000:03d}-{key_id % 1_000_000:06d}"
    assert parse_epid(text).key_id == key_id


# --- HWID ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "3A1C049600B60076",
        "3a1c049600b60076",
        "0x3A1C049600B60076",
        "3A:1C:04:96:00:B6:00:76",
        "3A 1C 04 96 00 B6 00 76",
        "  3A1C049600B60076  ",
    ],
)
def test_parse_hwid_accepts_the_usual_forms(text: str) -> None:
    assert parse_hwid(text) == bytes.fromhex("3a1c049600b60076")


@pytest.mark.parametrize(
    "text", ["", "3A1C049600B6007", "3A1C049600B600760", "ZZ1C049600B60076", "0x", "random"]
)
def test_parse_hwid_rejects_anything_but_16_hex_digits(text: str) -> None:
    with pytest.raises(ValueError, match="16 hexadecimal digits"):
        parse_hwid(text)


def test_random_hwid_is_8_seeded_bytes() -> None:
    assert random_hwid(random.Random(5)) == random_hwid(random.Random(5))
    assert len(random_hwid(random.Random(5))) == 8
    assert random_hwid(random.Random(5)) != random_hwid(random.Random(6))


@pytest.mark.parametrize("field", ["platform_id", "group_id", "key_id", "lcid", "build", "channel"])
def test_epid_fields_out_of_range_are_rejected(field: str) -> None:
    from datetime import date

    from kmsgate.protocol.epid import Epid

    values = {"platform_id": 3612, "group_id": 206, "key_id": 1, "lcid": 1033, "build": 26100}
    values[field] = 10**9 if field == "key_id" else 10**5 if field != "channel" else 100
    with pytest.raises(ValueError, match=field):
        Epid(**values, activation_date=date(2025, 1, 1))  # type: ignore[arg-type]
