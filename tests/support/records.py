"""make_record builds ActivationRecords with sensible defaults, make_draft their drafts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from kmsgate.store.drafts import RecordDraft, draft_of
from kmsgate.store.records import ActivationRecord

T0 = datetime(2024, 5, 6, 12, 30, 15, 123456, tzinfo=UTC)
WIN10_PRO = uuid.UUID("2de67392-b7a7-462a-b1ca-108dd189f588")
WINDOWS_APP = uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f")
WIN10_KMS = uuid.UUID("58e2134f-8e11-4d17-9cb2-91069c151148")


def make_record(**fields: Any) -> ActivationRecord:
    """An activated Windows 10 Pro request at T0 from a fresh CMID, with overrides."""
    base: dict[str, Any] = {
        "time": T0,
        "client_machine_id": uuid.uuid4(),
        "machine_name": "DESKTOP-0001",
        "address": "192.0.2.10",
        "application_id": WINDOWS_APP,
        "sku_id": WIN10_PRO,
        "sku_name": "Windows 10/11 Pro",
        "kms_id": WIN10_KMS,
        "product_family": "Windows",
        "license_status": 2,
        "protocol": 6,
        "result": "activated",
        "hresult": 0,
        "epid": "06401-00206-271-298329-03-1033-9600.0000-0452017",
        "node": "node-a",
    }
    base.update(fields)
    return ActivationRecord(**base)


def make_draft(**fields: Any) -> RecordDraft:
    """make_record's record as the RecordDraft the writer takes."""
    return draft_of(make_record(**fields))
