"""Turns session events into store records without touching the activation's critical path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from kmsgate.catalog import Catalog
from kmsgate.observability.logs import split_peer
from kmsgate.observability.metrics import product_family_label
from kmsgate.protocol.session import ActivationRefused, ActivationServed, Event
from kmsgate.store.records import ActivationRecord

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ActivationRecorder:
    """A KmsHost event hook that hands one record per KMS request to a write-behind queue."""

    def __init__(
        self,
        submit: Callable[[ActivationRecord], bool],
        catalog: Catalog,
        node: str,
        *,
        clock: Clock = _utc_now,
    ) -> None:
        self._submit = submit
        self._catalog = catalog
        self._node = node
        self._clock = clock

    def __call__(self, peer: str, event: Event) -> None:
        if isinstance(event, ActivationServed | ActivationRefused):
            self._submit(self.record_for(peer, event))

    def record_for(
        self, peer: str, event: ActivationServed | ActivationRefused
    ) -> ActivationRecord:
        """The store record of one served or refused request."""
        address, _ = split_peer(peer)
        request = event.request
        served = isinstance(event, ActivationServed)
        return ActivationRecord(
            time=self._clock(),
            client_machine_id=request.client_machine_id if request else None,
            machine_name=request.machine_name if request else "",
            address=address,
            application_id=request.application_id if request else None,
            sku_id=request.sku_id if request else None,
            sku_name=self._catalog.product_name(request.sku_id, request.kms_counted_id)
            if request
            else "undecodable request",
            kms_id=request.kms_counted_id if request else None,
            product_family=product_family_label(self._catalog, request),
            license_status=request.license_status if request else None,
            protocol=request.major_version if request else None,
            result="activated" if served else "refused",
            hresult=0 if isinstance(event, ActivationServed) else event.hresult,
            epid=event.response.epid if isinstance(event, ActivationServed) else None,
            node=self._node,
        )
