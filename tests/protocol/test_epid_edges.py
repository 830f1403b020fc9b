"""ePID edges mutation testing found unasserted: the `--epid` option grammar and key-id texts."""

from __future__ import annotations

import random
from datetime import date

import pytest

from kmsgate.protocol.epid import Epid, parse_epid, parse_epid_option, random_key_id

WINDOWS = "03612-00206-556-123727-03-1033-17763.0000-2972018"
OFFICE = "06401-00206-666-000123-03-1031-9600.0000-1012020"
OTHER = "05426-03858-014-999999-03-2052-9200.0000-0011990"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((), ("random", {})),
        (("random",), ("random", {})),
        (("per-request",), ("per-request", {})),
        ((" per-request ",), ("per-request", {})),
        (("per-request", "random"), ("random", {})),
        ((WINDOWS,), ("fixed", {"*": WINDOWS})),
        ((f"  {WINDOWS}\n",), ("fixed", {"*": WINDOWS})),
        ((WINDOWS, OTHER), ("fixed", {"*": OTHER})),
        ((WINDOWS, "per-request"), ("fixed", {"*": WINDOWS})),
        (("per-request", f"windows={WINDOWS}"), ("per-request", {"windows": WINDOWS})),
        ((f" Windows = {WINDOWS} ",), ("random", {"windows": WINDOWS})),
        ((f"OFFICE2016={OFFICE}",), ("random", {"office2016": OFFICE})),
        (
            (f"windows={WINDOWS}", f"office2024={OFFICE}", f"windows={OTHER}"),
            ("random", {"windows": OTHER, "office2024": OFFICE}),
        ),
        ((OTHER, f"windows={WINDOWS}"), ("fixed", {"*": OTHER, "windows": WINDOWS})),
    ],
)
def test_epid_option_grammar(values: tuple[str, ...], expected: tuple[str, dict[str, str]]) -> None:
    assert parse_epid_option(values) == expected


def test_only_the_first_equals_sign_separates_the_key_name() -> None:
    # A doubled "=" is a typo in the ePID, not a key named "windows=".
    with pytest.raises(ValueError, match="does not look like PPPPP-GGGGG"):
        parse_epid_option([f"windows=={WINDOWS}"])


def test_a_per_key_epid_never_replaces_the_catch_all() -> None:
    mode, epids = parse_epid_option([f"windows={WINDOWS}", OTHER])
    assert mode == "fixed" and epids == {"windows": WINDOWS, "*": OTHER}


@pytest.mark.parametrize("name", ["office", "officeXP", "office 2016", "linux", "win", "*"])
def test_epid_option_names_only_windows_or_an_office_year(name: str) -> None:
    text = f"{name}={WINDOWS}"
    message = (
        f"--epid {text!r}: the key name must be 'windows' or 'office' and a year "
        "(office2010 ... office2024)"
    )
    with pytest.raises(ValueError) as info:
        parse_epid_option([text])
    assert str(info.value) == message


@pytest.mark.parametrize(
    "value", ["windows=03612-00206", "office2019=", "03612-00206-556", "randomly", "fixed"]
)
def test_epid_option_rejects_a_malformed_epid(value: str) -> None:
    with pytest.raises(ValueError, match="does not look like PPPPP-GGGGG"):
        parse_epid_option([value])


@pytest.mark.parametrize(
    ("key_id", "middle"),
    [
        (15_000_007, "015-000007"),
        (14_000_007, "014-000007"),
        (999_999, "000-999999"),
        (1_000_000, "001-000000"),
        (123_456_789, "123-456789"),
    ],
)
def test_key_id_prints_as_millions_and_rest(key_id: int, middle: str) -> None:
    text = str(Epid(3612, 206, key_id, 1033, 17763, date(2018, 10, 24)))
    assert text == f"03612-00206-{middle}-03-1033-17763.0000-2972018"
    assert parse_epid(text).key_id == key_id


def test_a_key_id_draw_without_blocks_says_so() -> None:
    with pytest.raises(ValueError) as info:
        random_key_id((), random.Random(0))
    assert str(info.value) == "a CSVLK needs at least one key-id block"


@pytest.mark.parametrize("blocks", [((5, 4),), ((10, 0), (0, 5))])
def test_empty_or_inverted_blocks_add_up_to_no_key(blocks: tuple[tuple[int, int], ...]) -> None:
    with pytest.raises(ValueError, match="at least one key-id block"):
        random_key_id(blocks, random.Random(0))
