"""ActivationRecorder: one draft per served or refused request, every field in its place."""

from __future__ import annotations

import dataclasses
import time
import uuid

from kmsgate.catalog.loading import default_catalog
from kmsgate.net import Peer
from kmsgate.protocol.events import ActivationRefused, ActivationServed
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import KmsResponse
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.recording.recorder import NAME_CACHE_SIZE, ActivationRecorder, unix_microseconds
from kmsgate.store.drafts import RecordDraft, record_of
from tests.support.kms import make_request

CATALOG = default_catalog()
PEER = Peer("192.0.2.7", 50000)


def served(**request_fields: object) -> ActivationServed:
    request = dataclasses.replace(make_request(), **request_fields)
    epid = "06401-00206-551-023419-03-1033-26100.0000-1652024"
    response = KmsResponse(6, epid, request.client_machine_id, request.request_time, 50, 120, 10080)
    return ActivationServed(3, TransferSyntax.NDR32, request, response)


def recorder(drafts: list[RecordDraft]) -> ActivationRecorder:
    return ActivationRecorder(
        lambda d: drafts.append(d) is None, CATALOG, node="n1", clock=lambda: 7
    )


def test_each_id_lands_in_its_own_field_whatever_was_cached() -> None:
    drafts: list[RecordDraft] = []
    record = recorder(drafts)
    first = served()
    # Same SKU and KMS id, another application: it must not get the first one's bytes.
    other_app = served(application_id=uuid.uuid4())
    swapped = served(sku_id=first.request.kms_counted_id, kms_counted_id=first.request.sku_id)
    for event in (first, other_app, first, swapped):
        record(PEER, event)
    for draft, event in zip(drafts, (first, other_app, first, swapped), strict=True):
        stored = record_of(draft)
        request = event.request
        assert (stored.application_id, stored.sku_id, stored.kms_id) == (
            request.application_id,
            request.sku_id,
            request.kms_counted_id,
        )
        assert stored.client_machine_id == request.client_machine_id
        assert stored.sku_name == CATALOG.product_name(request.sku_id, request.kms_counted_id)
        assert (stored.address, stored.node, stored.epid) == (
            "192.0.2.7",
            "n1",
            event.response.epid,
        )
    assert drafts[0][4] is drafts[2][4]  # the id bytes of one product are shared
    assert drafts[0][4] != drafts[1][4]


def test_a_refusal_without_a_request_is_recorded_too() -> None:
    drafts: list[RecordDraft] = []
    recorder(drafts)(
        PEER, ActivationRefused(3, TransferSyntax.NDR32, None, HResult.INVALID_DATA, "bad")
    )
    stored = record_of(drafts[0])
    assert (stored.result, stored.hresult, stored.client_machine_id) == (
        "refused",
        int(HResult.INVALID_DATA),
        None,
    )


def test_the_product_cache_stays_bounded_under_made_up_ids() -> None:
    drafts: list[RecordDraft] = []
    record = recorder(drafts)
    for _ in range(NAME_CACHE_SIZE + 10):
        record(PEER, served(sku_id=uuid.uuid4()))
    assert len(record._products) <= NAME_CACHE_SIZE
    assert len(drafts) == NAME_CACHE_SIZE + 10


def test_a_draft_s_time_is_now_in_whole_microseconds() -> None:
    for _ in range(1000):
        before = time.time_ns() // 1000
        now = unix_microseconds()
        after = time.time_ns() // 1000
        assert type(now) is int
        # A double's rounding may put it one microsecond either side of the integer clock.
        assert before - 1 <= now <= after + 1
