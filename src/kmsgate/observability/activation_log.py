"""The activation log record: one compact line per request, and its structured fields."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal, TypedDict

from kmsgate.catalog import Catalog
from kmsgate.net import Peer
from kmsgate.protocol.engine import unix_from_filetime
from kmsgate.protocol.events import ActivationRefused, ActivationServed
from kmsgate.protocol.hresult import describe
from kmsgate.protocol.licensing import license_status_name
from kmsgate.protocol.messages import KmsRequest

activation_log = logging.getLogger("kmsgate.activation")


class ActivationFields(TypedDict):
    """Structured data of one activation record, attached to it as `record.kms`."""

    address: str
    port: int | None
    machine_name: str | None
    product: str | None
    sku_id: str | None
    kms_id: str | None
    cmid: str | None
    license_status: str | None
    protocol: str | None
    result: Literal["activated", "refused"]
    hresult: str
    epid: str | None
    client_count: int | None
    reason: str | None
    node: str | None


def printable(text: str) -> str:
    """Replace control and separator characters: a client-chosen name must not forge lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def _describe_request(request: KmsRequest, catalog: Catalog) -> str:
    product = catalog.product_name(request.sku_id, request.kms_counted_id)
    name = printable(request.machine_name.replace('"', "'")) or "-"
    return (
        f'{name} "{product}" {license_status_name(request.license_status)} '
        f"v{request.major_version}.{request.minor_version}"
    )


def client_time_text(filetime: int) -> str:
    """A client's FILETIME as `2024-05-01T12:00:00Z`; `filetime:N` when no date holds it.

    Clients choose any 64-bit value: 2^64-1 is the year 60056, which datetime refuses.
    """
    try:
        when = datetime.fromtimestamp(unix_from_filetime(filetime), UTC)
    except (ValueError, OverflowError, OSError):
        return f"filetime:{filetime}"
    return f"{when:%Y-%m-%dT%H:%M:%SZ}"


def activation_line(
    peer: Peer, event: ActivationServed | ActivationRefused, catalog: Catalog
) -> str:
    """`client machine "product" status vN.M result`: one compact line per request."""
    if event.request is None:
        return f"{peer} - refused {describe(event.hresult)}: {printable(event.reason)}"
    text = f"{peer} {_describe_request(event.request, catalog)}"
    if isinstance(event, ActivationServed):
        return (
            f"{text} activated count={event.response.current_client_count} "
            f"client-time={client_time_text(event.request.request_time)}"
        )
    return f"{text} refused {describe(event.hresult)}: {printable(event.reason)}"


def activation_fields(
    peer: Peer,
    event: ActivationServed | ActivationRefused,
    catalog: Catalog,
    node: str | None = None,
) -> ActivationFields:
    """The structured fields of one activation record (see ActivationFields)."""
    request = event.request
    fields: ActivationFields = {
        "address": peer.address,
        "port": peer.port,
        "machine_name": None,
        "product": None,
        "sku_id": None,
        "kms_id": None,
        "cmid": None,
        "license_status": None,
        "protocol": None,
        "result": "activated",
        "hresult": "0x00000000",
        "epid": None,
        "client_count": None,
        "reason": None,
        "node": node,
    }
    if request is not None:
        fields["machine_name"] = request.machine_name
        fields["product"] = catalog.product_name(request.sku_id, request.kms_counted_id)
        fields["sku_id"] = str(request.sku_id)
        fields["kms_id"] = str(request.kms_counted_id)
        fields["cmid"] = str(request.client_machine_id)
        fields["license_status"] = license_status_name(request.license_status)
        fields["protocol"] = f"{request.major_version}.{request.minor_version}"
    if isinstance(event, ActivationServed):
        fields["epid"] = event.response.epid
        fields["client_count"] = event.response.current_client_count
    else:
        fields["result"] = "refused"
        fields["hresult"] = f"0x{event.hresult:08X}"
        fields["reason"] = event.reason
    return fields


def log_activation(
    peer: Peer,
    event: ActivationServed | ActivationRefused,
    catalog: Catalog,
    node: str | None = None,
) -> None:
    """Log one request: INFO if served, WARNING if refused, with `extra={"kms": fields}`."""
    level = logging.INFO if isinstance(event, ActivationServed) else logging.WARNING
    # Skip building the line and fields when nobody listens (the hot path at high rates).
    if not activation_log.isEnabledFor(level):
        return
    # The line is the message itself, not a "%s" argument: it is never %-formatted again.
    activation_log.log(
        level,
        activation_line(peer, event, catalog),
        extra={"kms": activation_fields(peer, event, catalog, node)},
    )
