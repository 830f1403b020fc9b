"""RecordDraft: an activation record as a tuple of primitives, cheap to build and to marshal.

The serving process builds one per KMS request on its hot path (about 2 µs, against 11 µs
for an ActivationRecord with datetimes and UUIDs); the writer turns it into an
ActivationRecord off that path, in the writer process or inline.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from kmsgate.errors import KmsgateError
from kmsgate.store.records import ActivationRecord
from kmsgate.uuids import uuid_cache

# (unix time, client address, CMID bytes, machine name, application id bytes,
#  SKU id bytes, SKU name, KMS id bytes, product family, license status, protocol,
#  HRESULT (0 when served), ePID (None when refused))
RecordDraft = tuple[
    float,
    str,
    bytes | None,
    str,
    bytes | None,
    bytes | None,
    str,
    bytes | None,
    str,
    int | None,
    int | None,
    int,
    str | None,
]
DRAFT_FIELDS = 13


class DraftError(KmsgateError, ValueError):
    """A draft that is not a RecordDraft (wrong shape or types)."""


# SKU, application and KMS ids repeat in nearly every record, a renewing machine's CMID too.
GUID_CACHE_SIZE = 4096
_shared_guid = uuid_cache(GUID_CACHE_SIZE, little_endian=False)


def _guid(value: bytes | None) -> uuid.UUID | None:
    return None if value is None else _shared_guid(value)


def record_from_draft(draft: RecordDraft, node: str) -> ActivationRecord:
    """The ActivationRecord a draft stands for; DraftError when it is malformed."""
    if not isinstance(draft, tuple) or len(draft) != DRAFT_FIELDS:
        raise DraftError(f"a record draft has {DRAFT_FIELDS} fields, got {draft!r:.80}")
    (
        unix_time,
        address,
        cmid,
        machine_name,
        application_id,
        sku_id,
        sku_name,
        kms_id,
        family,
        license_status,
        protocol,
        hresult,
        epid,
    ) = draft
    try:
        # Positional, in field order: a third cheaper than keywords on this path.
        return ActivationRecord(
            datetime.fromtimestamp(unix_time, UTC),
            _guid(cmid),
            machine_name,
            address,
            _guid(application_id),
            _guid(sku_id),
            sku_name,
            _guid(kms_id),
            family,
            license_status,
            protocol,
            "refused" if hresult else "activated",
            hresult,
            epid,
            node,
        )
    except (TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise DraftError(f"malformed record draft: {exc}") from exc
