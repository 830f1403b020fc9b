"""ePID and HWID generation and validation (spec §15); randomness is always injected."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

# Windows LCIDs a KMS host may report (the set genuine hosts ship with).
VALID_LCIDS = (
    1078, 1052, 1025, 2049, 3073, 4097, 5121, 6145, 7169, 8193, 9217, 10241, 11265, 12289,
    13313, 14337, 15361, 16385, 1067, 1068, 2092, 1069, 1059, 1093, 5146, 1026, 1027, 1028,
    2052, 3076, 4100, 5124, 1050, 4122, 1029, 1030, 1125, 1043, 2067, 1033, 2057, 3081, 4105,
    5129, 6153, 7177, 8201, 9225, 10249, 11273, 12297, 13321, 1061, 1080, 1065, 1035, 1036,
    2060, 3084, 4108, 5132, 6156, 1079, 1110, 1031, 2055, 3079, 4103, 5127, 1032, 1095, 1037,
    1081, 1038, 1039, 1057, 1040, 2064, 1041, 1099, 1087, 1111, 1042, 1088, 1062, 1063, 1071,
    1086, 2110, 1100, 1082, 1153, 1102, 1104, 1044, 2068, 1045, 1046, 2070, 1094, 1131, 2155,
    3179, 1048, 1049, 9275, 4155, 5179, 3131, 1083, 2107, 8251, 6203, 7227, 1103, 2074, 6170,
    3098, 7194, 1051, 1060, 1034, 2058, 3082, 4106, 5130, 6154, 7178, 8202, 9226, 10250, 11274,
    12298, 13322, 14346, 15370, 16394, 17418, 18442, 19466, 20490, 1089, 1053, 2077, 1114, 1097,
    1092, 1098, 1054, 1074, 1058, 1056, 1091, 2115, 1066, 1106, 1076, 1077,
)  # fmt: skip

VOLUME_CHANNEL = 3
HWID_SIZE = 8
# re.ASCII: \d must not match other scripts' digits, which would go out on the wire.
_EPID = re.compile(
    r"(?P<platform>\d{5})-(?P<group>\d{5})-(?P<key_hi>\d{3})-(?P<key_lo>\d{6})-(?P<channel>\d{2})"
    r"-(?P<lcid>\d{1,5})-(?P<build>\d{1,5})\.0000-(?P<day>\d{3})(?P<year>\d{4})",
    re.ASCII,
)


class CsvlkSource(Protocol):
    """What an ePID needs from the host key (CSVLK) it claims."""

    @property
    def group_id(self) -> int: ...
    @property
    def key_id_blocks(self) -> tuple[tuple[int, int], ...]: ...
    @property
    def release_date(self) -> date: ...


class HostBuildSource(Protocol):
    """What an ePID needs from the host OS build it claims."""

    @property
    def build(self) -> int: ...
    @property
    def platform_id(self) -> int: ...
    @property
    def release_date(self) -> date: ...


@dataclass(frozen=True, slots=True)
class Epid:
    """The fields of an extended product id."""

    platform_id: int
    group_id: int
    key_id: int
    lcid: int
    build: int
    activation_date: date
    channel: int = VOLUME_CHANNEL

    def __post_init__(self) -> None:
        limits = {
            "platform_id": 99_999,
            "group_id": 99_999,
            "key_id": 999_999_999,
            "lcid": 99_999,
            "build": 99_999,
            "channel": 99,
        }
        for name, limit in limits.items():
            if not 0 <= getattr(self, name) <= limit:
                raise ValueError(f"ePID {name} {getattr(self, name)} is out of range")

    def __str__(self) -> str:
        day = self.activation_date.timetuple().tm_yday
        return (
            f"{self.platform_id:05d}-{self.group_id:05d}-{self.key_id // 1_000_000:03d}-"
            f"{self.key_id % 1_000_000:06d}-{self.channel:02d}-{self.lcid}-{self.build}.0000-"
            f"{day:03d}{self.activation_date.year:04d}"
        )


def parse_epid(text: str) -> Epid:
    """Parse and validate an ePID string; raise ValueError naming what is wrong."""
    match = _EPID.fullmatch(text)
    if match is None:
        raise ValueError(
            f"ePID {text!r} does not look like PPPPP-GGGGG-KKK-KKKKKK-03-LCID-BUILD.0000-DDDYYYY"
        )
    year = int(match["year"])
    day = int(match["day"])
    if year < 1990 or not 1 <= day <= (366 if _leap(year) else 365):
        raise ValueError(f"ePID {text!r} has an impossible activation date")
    if int(match["lcid"]) not in VALID_LCIDS:
        raise ValueError(f"ePID {text!r} has an unknown LCID {match['lcid']}")
    return Epid(
        platform_id=int(match["platform"]),
        group_id=int(match["group"]),
        key_id=int(match["key_hi"]) * 1_000_000 + int(match["key_lo"]),
        lcid=int(match["lcid"]),
        build=int(match["build"]),
        activation_date=date(year, 1, 1) + timedelta(days=day - 1),
        channel=int(match["channel"]),
    )


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def random_key_id(blocks: tuple[tuple[int, int], ...], rng: random.Random) -> int:
    """A key id drawn uniformly from inclusive blocks (holes between blocks are never drawn)."""
    total = sum(end - start + 1 for start, end in blocks)
    if total <= 0:
        raise ValueError("a CSVLK needs at least one key-id block")
    pick = rng.randrange(total)
    for start, end in blocks:
        size = end - start + 1
        if pick < size:
            return start + pick
        pick -= size
    raise AssertionError("unreachable: pick < total")


def random_epid(
    csvlk: CsvlkSource, host: HostBuildSource, lcid: int, rng: random.Random, today: date
) -> Epid:
    """A plausible ePID: key id inside the CSVLK's blocks, date after both releases."""
    key_id = random_key_id(csvlk.key_id_blocks, rng)
    earliest = max(csvlk.release_date, host.release_date)
    span = max((today - earliest).days, 0)
    activated = earliest + timedelta(days=rng.randint(0, span))
    return Epid(host.platform_id, csvlk.group_id, key_id, lcid, host.build, activated)


def parse_epid_option(values: Iterable[str]) -> tuple[str, dict[str, str]]:
    """Split `--epid` values into a mode and per-key ePIDs; ValueError names a bad value.

    `random` (the default) keeps one generated ePID per held host key, `per-request` draws a
    new one for every answer, a bare ePID is answered for every key (key "*"), and
    `NAME=EPID` sets one key's: NAME is "windows" or "office" + year (office2010 ...).
    """
    mode = "random"
    fixed: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for value in values:
        text = value.strip()
        name, sep, epid = text.partition("=")
        if sep:
            name = name.strip().casefold()
            if not (name == "windows" or (name.startswith("office") and name[6:].isdigit())):
                raise ValueError(
                    f"--epid {text!r}: the key name must be 'windows' or 'office' and a year "
                    "(office2010 ... office2024)"
                )
            parse_epid(epid.strip())
            overrides[name] = epid.strip()
        elif text in ("random", "per-request"):
            mode = text
        else:
            parse_epid(text)
            fixed = {"*": text}
    if fixed:
        mode = "fixed"
    return mode, {**fixed, **overrides}


def parse_hwid(text: str) -> bytes:
    """Parse 16 hex digits (first wire byte first) into the 8-byte HWID."""
    cleaned = text.strip().removeprefix("0x").replace(":", "").replace(" ", "")
    if not re.fullmatch(r"[0-9a-fA-F]{16}", cleaned):
        raise ValueError(f"HWID {text!r} must be 16 hexadecimal digits")
    return bytes.fromhex(cleaned)


def random_hwid(rng: random.Random) -> bytes:
    """A random 8-byte HWID."""
    return rng.randbytes(HWID_SIZE)
