"""Turns session events into record drafts, and hands them over before their answers leave."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

from kmsgate.catalog import Catalog
from kmsgate.net import Peer
from kmsgate.observability.metrics import product_family_label
from kmsgate.protocol import wire
from kmsgate.protocol.events import ActivationRefused, ActivationServed, Event
from kmsgate.protocol.messages import KmsRequest
from kmsgate.store.drafts import RecordDraft, result_of
from kmsgate.uuids import uuid_bytes

# Names and id bytes are found once per (application, SKU, KMS id); clients choose those
# ids, so the cache is bounded and simply starts over when full.
NAME_CACHE_SIZE: Final = 4096
RECORDED: Final = (ActivationServed, ActivationRefused)
ACTIVATED: Final = result_of(0)
REFUSED: Final = result_of(1)
# A UUID's 16 bytes, read in C when the extension is there (the CMID's, in every draft).
_uuid_bytes: Final = wire.uuid_bytes or uuid_bytes
# (application id, SKU id, SKU name, KMS id, product family): a draft's fields 4 to 8.
_Product = tuple[bytes, bytes, str, bytes, str]
_wall_time: Final = time.time


def unix_microseconds() -> int:
    """Now, in whole microseconds since the Unix epoch: a draft's time."""
    # A double holds today's microseconds to a quarter of one, and int() of it is a machine
    # conversion, where time_ns() // 1000 divides a three-digit long (1 000 instructions).
    return int(_wall_time() * 1_000_000)


class RecordGate(Protocol):
    """Where drafts go, and the host's way to know they are safe before it answers."""

    def submit(self, draft: RecordDraft) -> bool:
        """Take a draft; False when it is dropped (the writer is closed)."""
        ...

    def hand_over(self) -> bool:
        """Pass on what was submitted; True once every draft submitted so far is handed over."""
        ...

    def when_handed_over(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every draft submitted so far is handed over."""
        ...


class ActivationRecorder:
    """A KmsHost event hook that hands one draft per KMS request to the record writer."""

    def __init__(
        self,
        submit: Callable[[RecordDraft], bool],
        catalog: Catalog,
        *,
        node: str,
        clock: Callable[[], int] = unix_microseconds,
    ) -> None:
        """`node`: the --node-name the records carry; `clock`: microseconds since the epoch."""
        self._submit = submit
        self._catalog = catalog
        self._node = node
        self._clock = clock
        # Keyed by the ids' integers: a UUID's __hash__ and __eq__ run interpreted.
        self._products: dict[tuple[int, int, int], _Product] = {}
        self._undecodable = ("undecodable request", product_family_label(catalog, None))
        self._last_ids: tuple[object, object, object] = (None, None, None)
        self._last_product: _Product = (b"", b"", "", b"", "")

    def __call__(self, peer: Peer, event: Event) -> None:
        # Called for every session event (binds, closes...): a tuple, not a union built per call.
        if isinstance(event, RECORDED):
            self._submit(self.draft_for(peer, event))

    def draft_for(self, peer: Peer, event: ActivationServed | ActivationRefused) -> RecordDraft:
        """The record draft of one served or refused request."""
        address = peer.address
        if isinstance(event, ActivationServed):
            result, hresult, epid = ACTIVATED, 0, event.response.epid
        else:
            # A plain int: drafts are marshalled.
            result, hresult, epid = REFUSED, int(event.hresult), None
        request = event.request
        if request is None:
            sku_name, family = self._undecodable
            return (self._clock(), None, "", address, None, None, sku_name, None, family,
                    None, None, result, hresult, epid, self._node)  # fmt: skip
        application_id, sku_id, sku_name, kms_id, family = self._product_of(request)
        return (
            self._clock(),
            _uuid_bytes(request.client_machine_id),
            request.machine_name,
            address,
            application_id,
            sku_id,
            sku_name,
            kms_id,
            family,
            request.license_status,
            request.major_version,
            result,
            hresult,
            epid,
            self._node,
        )

    def _product_of(self, request: KmsRequest) -> _Product:
        """The request's ids as bytes, its product name and family: one object per product
        for every draft (UUID.bytes builds new bytes each time)."""
        ids = (request.application_id, request.sku_id, request.kms_counted_id)
        last = self._last_ids
        # The message decoder shares one UUID object per id: a fleet's run of requests for
        # one product is the same three objects, compared by identity before any hashing.
        if ids[0] is last[0] and ids[1] is last[1] and ids[2] is last[2]:
            return self._last_product
        key = (ids[0].int, ids[1].int, ids[2].int)
        product = self._products.get(key)
        if product is None:
            if len(self._products) >= NAME_CACHE_SIZE:
                self._products.clear()
            product = self._products[key] = (
                uuid_bytes(request.application_id),
                uuid_bytes(request.sku_id),
                self._catalog.product_name(request.sku_id, request.kms_counted_id),
                uuid_bytes(request.kms_counted_id),
                product_family_label(self._catalog, request),
            )
        self._last_ids, self._last_product = ids, product
        return product
