"""RecordDraft: an activation record as a tuple of primitives, the shape the store writes.

The serving process builds one per KMS request (a tuple, no datetimes or UUID objects) and
hands it over through the record ring as marshal bytes; the writer folds drafts straight
into rows (activation_fold.py). Fields follow ActivationRecord's, in its order, as plain
values: time in integer microseconds since the Unix epoch (exact both ways), ids as their 16
big-endian bytes. ActivationRecord stays the store's API type: draft_of and record_of convert.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from kmsgate.errors import KmsgateError
from kmsgate.store.records import ActivationRecord
from kmsgate.uuids import UuidCache

# (microseconds since the epoch, CMID, machine name, address, application id, SKU id,
#  SKU name, KMS id, product family, license status, protocol, result, HRESULT, ePID, node)
RecordDraft = tuple[
    int,
    bytes | None,
    str,
    str,
    bytes | None,
    bytes | None,
    str,
    bytes | None,
    str,
    int | None,
    int | None,
    str,
    int,
    str | None,
    str,
]
DRAFT_FIELDS = 15
# The shape of version 1 (until December 2026): a ring left by it is still written.
# (unix seconds, address, CMID, machine name, application id, SKU id, SKU name, KMS id,
#  product family, license status, protocol, HRESULT, ePID)
V1_DRAFT_FIELDS = 13

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
MIN_MICROS = (datetime.min.replace(tzinfo=UTC) - EPOCH) // ONE_MICROSECOND
MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - EPOCH) // ONE_MICROSECOND
_OPTIONAL_ID = (bytes, type(None))
_OPTIONAL_INT = (int, type(None))
_OPTIONAL_STR = (str, type(None))
# The type of each field a draft may hold (bool is no int here: marshal keeps it apart).
_FIELD_TYPES = (
    (int,), _OPTIONAL_ID, (str,), (str,), _OPTIONAL_ID, _OPTIONAL_ID, (str,), _OPTIONAL_ID,
    (str,), _OPTIONAL_INT, _OPTIONAL_INT, (str,), (int,), _OPTIONAL_STR, (str,),
)  # fmt: skip
_ID_FIELDS = (1, 4, 5, 7)
# Every combination of field types a well-formed draft has: one set lookup checks them all.
_WELL_TYPED: frozenset[tuple[type, ...]] = frozenset({()})
for _choices in _FIELD_TYPES:
    _WELL_TYPED = frozenset((*kinds, kind) for kinds in _WELL_TYPED for kind in _choices)


class DraftError(KmsgateError, ValueError):
    """A draft that is not a RecordDraft (wrong shape or types)."""


def result_of(hresult: int) -> str:
    """The record's result for an HRESULT: served requests carry 0."""
    return "refused" if hresult else "activated"


def checked_draft(value: object, node: str) -> RecordDraft:
    """`value` as a RecordDraft, a version 1 draft upgraded (answered by `node`); DraftError
    when it is none."""
    if type(value) is tuple and len(value) == V1_DRAFT_FIELDS:
        value = _upgraded(value, node)
    return _checked(value)


def _checked(value: object) -> RecordDraft:
    """`value` when it is a RecordDraft: its shape, each field's type, ids of 16 bytes and a
    time a datetime holds; DraftError otherwise."""
    if type(value) is not tuple or tuple(map(type, value)) not in _WELL_TYPED:
        raise DraftError(f"a record draft has {DRAFT_FIELDS} typed fields, got {value!r:.120}")
    for index in _ID_FIELDS:
        raw = value[index]
        if raw is not None and len(raw) != 16:
            raise DraftError(f"a record draft's id field {index} is not 16 bytes: {raw!r:.60}")
    draft: RecordDraft = value
    if not MIN_MICROS <= draft[0] <= MAX_MICROS:
        raise DraftError(f"a record draft's time is out of range: {draft[0]}")
    return draft


def _upgraded(old: tuple[object, ...], node: str) -> object:
    """A version 1 draft in today's shape (types are checked by the caller)."""
    when, address, cmid, name, app, sku, sku_name, kms, family, status, protocol, hres, epid = old
    if type(when) is not float or type(hres) is not int:
        return old
    try:
        micros = round(when * 1_000_000)
    except (ValueError, OverflowError):  # inf, nan
        return old
    return (micros, cmid, name, address, app, sku, sku_name, kms, family, status, protocol,
            result_of(hres), hres, epid, node)  # fmt: skip


def draft_of(record: ActivationRecord) -> RecordDraft:
    """The draft of an ActivationRecord (exact); ValueError for a naive time."""
    when = record.time
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"ActivationRecord.time must be a timezone-aware datetime, got {when!r}")
    return (
        (when - EPOCH) // ONE_MICROSECOND,
        _raw(record.client_machine_id),
        record.machine_name,
        record.address,
        _raw(record.application_id),
        _raw(record.sku_id),
        record.sku_name,
        _raw(record.kms_id),
        record.product_family,
        record.license_status,
        record.protocol,
        record.result,
        record.hresult,
        record.epid,
        record.node,
    )


def _raw(value: uuid.UUID | None) -> bytes | None:
    return None if value is None else value.bytes


# SKU, application and KMS ids repeat in nearly every record, a renewing machine's CMID too.
GUID_CACHE_SIZE = 4096
shared_uuid = UuidCache(GUID_CACHE_SIZE, little_endian=False).get


def time_of(micros: int) -> datetime:
    """The UTC datetime of a draft's time."""
    return EPOCH + timedelta(microseconds=micros)


def _guid(value: bytes | None) -> uuid.UUID | None:
    return None if value is None else shared_uuid(value)


def record_of(draft: object) -> ActivationRecord:
    """The ActivationRecord a draft stands for; DraftError when it is malformed."""
    checked = _checked(draft)
    return ActivationRecord(
        time_of(checked[0]),
        _guid(checked[1]),
        checked[2],
        checked[3],
        _guid(checked[4]),
        _guid(checked[5]),
        checked[6],
        _guid(checked[7]),
        *checked[8:],
    )
