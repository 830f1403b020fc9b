"""Tests of logging and metrics; shared builders of real session events."""

from __future__ import annotations

import uuid

from kmsgate.protocol.events import ActivationRefused, ActivationServed
from kmsgate.protocol.messages import KmsRequest, KmsResponse
from kmsgate.protocol.ndr import TransferSyntax

WINDOWS_APP = uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f")
OFFICE_APP = uuid.UUID("0ff1ce15-a989-479d-af46-f275c6370663")
SERVER_2019_KMS = uuid.UUID("8449b1fb-f0ea-497a-99ab-66ca96e9a0f5")
SERVER_2019_DC_SKU = uuid.UUID("34e1ae55-27f8-4950-8877-7a03be5fb181")
CMID = uuid.UUID("12345678-1234-5678-9abc-def012345678")
# 2024-01-02T03:04:05Z as FILETIME.
REQUEST_TIME = 133_486_382_450_000_000
EPID = "06401-00206-271-298329-03-1033-9600.0000-0452017"


def make_request(
    *,
    version: int = 6,
    sku_id: uuid.UUID = SERVER_2019_DC_SKU,
    kms_id: uuid.UUID = SERVER_2019_KMS,
    app_id: uuid.UUID = WINDOWS_APP,
    name: str = "DESKTOP-42.corp.example",
    license_status: int = 2,
) -> KmsRequest:
    """A request as a session decodes it."""
    return KmsRequest(
        major_version=version,
        application_id=app_id,
        sku_id=sku_id,
        kms_counted_id=kms_id,
        client_machine_id=CMID,
        required_client_count=5,
        request_time=REQUEST_TIME,
        machine_name=name,
        license_status=license_status,
    )


def served(request: KmsRequest | None = None, *, count: int = 10) -> ActivationServed:
    """An ActivationServed event answering `request` (a Server 2019 v6 one by default)."""
    request = request or make_request()
    response = KmsResponse(
        major_version=request.major_version,
        epid=EPID,
        client_machine_id=request.client_machine_id,
        response_time=request.request_time,
        current_client_count=count,
        activation_interval=120,
        renewal_interval=10080,
    )
    return ActivationServed(2, TransferSyntax.NDR32, request, response)


def refused(
    request: KmsRequest | None = None,
    *,
    hresult: int = 0xC004F042,
    reason: str = "product not allowed",
) -> ActivationRefused:
    """An ActivationRefused event; request None is an undecodable request."""
    return ActivationRefused(2, TransferSyntax.NDR64, request, hresult, reason)
