"""Folding a batch of record drafts into the rows and counter increments it writes.

Pure: no connection. Draft times (microseconds) and ids (bytes) are converted to the target
driver's values here, once per record, so the writers in activation_batch.py send the rows as
they are. Folding drafts rather than ActivationRecords spares the writer a datetime, four
UUIDs and a dataclass per record (4.1 → 0.9 µs a record).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice, repeat
from operator import floordiv, le, mod
from typing import Any, TypeVar, cast

from kmsgate._native import optional_extension
from kmsgate.store.drafts import EPOCH, RecordDraft, result_of, shared_uuid, time_of

# One pass over the drafts in C for raw rows (_draft_fold.c); else the Python fold below.
DRAFT_FOLD, DRAFT_FOLD_BUILD = optional_extension("kmsgate.store._draft_fold", "DRAFT_FOLD")
ACTIVATED = result_of(0)
HOUR_MICROS = 3600 * 1_000_000
DAY_MICROS = 24 * HOUR_MICROS
_Key = TypeVar("_Key")

# The column order of the rows fold() builds (and the writers' statements name).
ACTIVATION_COLUMNS = (
    "time",
    "cmid",
    "machine_name",
    "address",
    "sku_id",
    "sku_name",
    "license_status",
    "protocol",
    "result",
    "hresult",
    "node",
)
CLIENT_COLUMNS = (
    "cmid",
    "machine_name",
    "application_id",
    "sku_id",
    "sku_name",
    "kms_id",
    "license_status",
    "first_seen",
    "last_seen",
    "request_count",
    "last_epid",
    "last_address",
    "last_protocol",
)


def aware(value: datetime, what: str) -> datetime:
    """`value` in UTC; ValueError for a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def hour_of(value: datetime) -> datetime:
    """The UTC hour a time falls in."""
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# ---------------------------------------------------------------- driver values


NAIVE_EPOCH = EPOCH.replace(tzinfo=None)


def _second_text(second: int) -> str:
    return (NAIVE_EPOCH + timedelta(seconds=second)).isoformat(" ")


class _Converted(dict[Any, Any]):
    """Values converted once per distinct key within one fold: seconds repeat."""

    def __init__(self, convert: Callable[[Any], Any]) -> None:
        super().__init__()
        self._convert = convert

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self._convert(key)
        return value


def _sqlite_times(micros: Sequence[int]) -> list[str]:
    """Draft times as SQLAlchemy's SQLite DATETIME text (naive UTC, always with microseconds),
    which UtcDateTime reads back and which sorts as text; in C-level loops, each second's
    text made once (a Python call per time cost 0.3 µs)."""
    texts = map(_Converted(_second_text).__getitem__, map(floordiv, micros, repeat(1_000_000)))
    fractions = map(mod, micros, repeat(1_000_000))
    return list(map(mod, repeat("%s.%06d"), zip(texts, fractions, strict=True)))


def _month_text(day: int) -> str:
    return (NAIVE_EPOCH + timedelta(days=day)).isoformat()[:7]


def sqlite_months(micros: Iterable[int]) -> list[str]:
    """The "YYYY-MM" each time falls in (UTC), each day's made once, in C-level loops."""
    return list(map(_Converted(_month_text).__getitem__, map(floordiv, micros, repeat(DAY_MICROS))))


def _native_times(micros: Sequence[int]) -> list[datetime]:
    return list(map(time_of, micros))


@dataclass(frozen=True, slots=True)
class DriverValues:
    """How one driver takes draft times (microseconds) and ids (16 bytes): converted a column
    at a time, while folding; or, `raw_rows`, left in the activation rows as they are, for a
    writer that converts them as it binds them (sqlite_rows.py)."""

    times: Callable[[Sequence[int]], list[Any]]
    of_uuid: Callable[[bytes], Any]
    raw_rows: bool = False

    def of_optional_uuid(self, value: bytes | None) -> Any:
        return None if value is None else self.of_uuid(value)

    def uuids(self, ids: Sequence[bytes | None]) -> list[Any]:
        """of_optional_uuid of each id (a C-level loop when none is None), each distinct id
        converted once: a product's id is one bytes object in all its drafts, a client's
        repeats, and equal ids as one value have their hash computed once downstream."""
        if None in ids:
            return list(map(self.of_optional_uuid, ids))
        return list(map(_Converted(self.of_uuid).__getitem__, cast(Sequence[bytes], ids)))


NATIVE_VALUES = DriverValues(times=_native_times, of_uuid=shared_uuid)  # asyncpg encodes both
# SQLAlchemy's Uuid on SQLite: 32 hex digits, no dashes.
SQLITE_VALUES = DriverValues(times=_sqlite_times, of_uuid=bytes.hex)
# The same, but the activation rows keep draft times and ids (RAW_TIME, RAW_IDS).
SQLITE_RAW_VALUES = DriverValues(times=_sqlite_times, of_uuid=bytes.hex, raw_rows=True)
# Where raw activation rows hold a draft's time and ids (ACTIVATION_COLUMNS positions).
RAW_TIME = 0
RAW_IDS = (1, 4)


def converted_rows(rows: Sequence[tuple[Any, ...]], driver: DriverValues) -> list[tuple[Any, ...]]:
    """Raw activation rows with their times and ids converted for `driver`."""
    if not rows:
        return []
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
    columns[RAW_TIME] = driver.times(columns[RAW_TIME])
    for index in RAW_IDS:
        columns[index] = driver.uuids(columns[index])
    return list(zip(*columns, strict=True))


# ---------------------------------------------------------------- folding (pure)


@dataclass(slots=True)
class ClientFold:
    """All of one batch's records for one CMID, folded into a single client row."""

    first: int  # microseconds, as in the drafts
    latest: RecordDraft
    latest_time: int
    count: int

    def values(self, cmid: Any, driver: DriverValues) -> tuple[Any, ...]:
        """The client row in CLIENT_COLUMNS order, as driver values."""
        draft = self.latest
        first, latest = driver.times((self.first, self.latest_time))
        return (
            cmid,
            draft[2],  # machine name
            driver.of_optional_uuid(draft[4]),  # application id
            driver.of_optional_uuid(draft[5]),  # SKU id
            draft[6],  # SKU name
            driver.of_optional_uuid(draft[7]),  # KMS id
            draft[9],  # license status
            first,
            latest,
            self.count,
            draft[13],  # ePID
            draft[3],  # address
            draft[10],  # protocol
        )


@dataclass(slots=True)
class FoldedBatch:
    """A batch reduced to the rows and counter increments one transaction writes."""

    driver: DriverValues
    activation_rows: list[tuple[Any, ...]] = field(default_factory=list)
    clients: dict[Any, ClientFold] = field(default_factory=dict)  # by driver CMID value
    counters: dict[str, int] = field(default_factory=dict)
    hours: dict[tuple[datetime, str], int] = field(default_factory=dict)
    products: dict[tuple[str, str], int] = field(default_factory=dict)
    # The licence report's rows, {(month, SKU id, CMID): SKU name}, when the fold made them
    # (in C); None: the writer makes them from the activation rows.
    machine_months: dict[tuple[str, str, str], str] | None = None

    def client_rows(self) -> list[tuple[Any, ...]]:
        """Client rows in CMID order (hex text and uuid sort alike): nodes lock in one order."""
        return [fold.values(cmid, self.driver) for cmid, fold in sorted(self.clients.items())]

    def extend(self, later: FoldedBatch) -> None:
        """Add the fold of the drafts that followed this batch's: the same as folding all."""
        self.activation_rows += later.activation_rows
        for cmid, fold in later.clients.items():
            seen = self.clients.get(cmid)
            if seen is None:
                self.clients[cmid] = fold
                continue
            seen.count += fold.count
            if fold.first < seen.first:
                seen.first = fold.first
            if fold.latest_time >= seen.latest_time:  # equal times: the later record wins
                seen.latest, seen.latest_time = fold.latest, fold.latest_time
        _add_counts(self.counters, later.counters)
        _add_counts(self.hours, later.hours)
        _add_counts(self.products, later.products)
        if self.machine_months is None or later.machine_months is None:
            self.machine_months = None
        else:
            self.machine_months = later.machine_months | self.machine_months  # first wins


def _add_counts(totals: dict[_Key, int], more: dict[_Key, int]) -> None:
    for key, count in more.items():
        totals[key] = totals.get(key, 0) + count


def fold(drafts: Sequence[RecordDraft], driver: DriverValues = NATIVE_VALUES) -> FoldedBatch:
    """Activation rows, one fold per CMID, and the counters' increments of a batch of
    well-formed drafts (store.drafts.checked_draft).

    Column by column, each in a C-level loop (zip, map, Counter): Python statements per
    record cost the serving core a microsecond a record. Raw rows are folded in one pass in
    C when _draft_fold.c is built.
    """
    if driver.raw_rows and DRAFT_FOLD is not None:
        return _fold_in_c(drafts if isinstance(drafts, list) else list(drafts), driver)
    batch = FoldedBatch(driver)
    batch.counters["activations"] = len(drafts)
    if not drafts:
        return batch
    (micros, cmids, names, addresses, _, sku_ids, sku_names, _, families, statuses, protocols,
     results, hresults, _, nodes) = zip(*drafts, strict=True)  # fmt: skip
    keys = driver.uuids(cmids)
    raw = driver.raw_rows
    batch.activation_rows = list(
        zip(
            micros if raw else driver.times(micros),
            cmids if raw else keys,
            names,
            addresses,
            sku_ids if raw else driver.uuids(sku_ids),
            sku_names,
            statuses,
            protocols,
            results,
            hresults,
            nodes,
            strict=True,
        )
    )
    batch.clients = _client_folds(drafts, micros, keys)
    batch.hours = _hour_counts(micros, nodes)
    family = families[0]
    if families.count(family) == len(families):
        # One product family in the batch (as a rule): no pair built and hashed per record.
        batch.products = {(family, name): n for name, n in Counter(sku_names).items()}
    else:
        batch.products = dict(Counter(zip(families, sku_names, strict=True)))
    _add_outcomes(batch.counters, Counter(results), Counter(protocols))
    return batch


def _add_outcomes(
    counters: dict[str, int], results: dict[str, int], protocols: dict[Any, int]
) -> None:
    """The counters of each result and protocol (a request without a protocol counts in none)."""
    counters.update((f"result:{r}", n) for r, n in results.items())
    counters.update((f"protocol:{p}", n) for p, n in protocols.items() if p is not None)


def _hours_of(counts: dict[tuple[int, str], int]) -> dict[tuple[datetime, str], int]:
    """{(hour since the epoch, node): n} keyed by the hour's datetime instead."""
    return {(time_of(hour * HOUR_MICROS), node): n for (hour, node), n in counts.items()}


def _fold_in_c(drafts: list[RecordDraft], driver: DriverValues) -> FoldedBatch:
    """fold() of raw rows, its per-record work done by _draft_fold.c; per key, the rest."""
    assert DRAFT_FOLD is not None
    rows, clients, hours, products, results, protocols, days = DRAFT_FOLD.fold(drafts, ACTIVATED)
    batch = FoldedBatch(driver, rows, products=products, hours=_hours_of(hours))
    batch.counters["activations"] = len(drafts)
    of_uuid = driver.of_uuid
    batch.clients = {of_uuid(cmid): ClientFold(*entry) for cmid, entry in clients.items()}
    _add_outcomes(batch.counters, results, protocols)
    # Keys in order of their first served request: the month's first name is kept.
    months = _Converted(_month_text)
    batch.machine_months = {}
    for (day, sku, cmid), name in days.items():
        batch.machine_months.setdefault((months[day], sku.hex(), cmid.hex()), name)
    return batch


def _hour_counts(micros: Sequence[int], nodes: Sequence[str]) -> dict[tuple[datetime, str], int]:
    """Records per (UTC hour, node).

    A batch spans a fraction of a second from one node, as a rule: that case is found by
    C-level min, max and count instead of a key built and counted per record.
    """
    first_hour = min(micros) // HOUR_MICROS
    node = nodes[0]
    if max(micros) // HOUR_MICROS == first_hour and nodes.count(node) == len(nodes):
        return {(time_of(first_hour * HOUR_MICROS), node): len(micros)}
    return _hours_of(Counter(zip(map(floordiv, micros, repeat(HOUR_MICROS)), nodes, strict=True)))


def _client_folds(
    drafts: Sequence[RecordDraft], stamps: Sequence[int], keys: Sequence[Any]
) -> dict[Any, ClientFold]:
    """One fold per CMID: its count, earliest time and newest record (the later on ties);
    `stamps` are the drafts' times."""
    counts = Counter(keys)
    counts.pop(None, None)
    if all(map(le, stamps, islice(stamps, 1, None))):
        # Times in arrival order (the usual case): a CMID's last record is its newest and its
        # first the earliest, both found by dicts built in C (a stamp is its draft's time).
        last = dict(zip(keys, drafts, strict=True))
        first = dict(zip(reversed(keys), reversed(stamps), strict=True))
        return {
            key: ClientFold(first[key], last[key], last[key][0], count)
            for key, count in counts.items()
        }
    folds: dict[Any, ClientFold] = {}
    for draft, stamp, key in zip(drafts, stamps, keys, strict=True):
        if key is None:
            continue
        seen = folds.get(key)
        if seen is None:
            folds[key] = ClientFold(stamp, draft, stamp, 1)
            continue
        seen.count += 1
        if stamp < seen.first:
            seen.first = stamp
        if stamp >= seen.latest_time:  # equal times: the later record wins
            seen.latest, seen.latest_time = draft, stamp
    return folds
