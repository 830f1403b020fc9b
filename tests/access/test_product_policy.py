"""Product policy by SKU id, KMS id and name glob, against the real catalogue and host."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from kmsgate.access.products import ProductPolicy
from kmsgate.catalog import default_catalog
from kmsgate.config.settings import ServeSettings
from kmsgate.protocol.errors import ActivationError
from kmsgate.protocol.hresult import HResult
from kmsgate.server.host import KmsHost
from tests.support.kms import activate_once, make_request

CATALOG = default_catalog()
SERVER_2019 = make_request()  # Windows Server 2019 Datacenter
OFFICE = CATALOG.resolve_product("Office Professional Plus 2019")
OFFICE_REQUEST = dataclasses.replace(
    SERVER_2019,
    sku_id=OFFICE.id,
    kms_counted_id=OFFICE.kms_id,
    application_id=OFFICE.application_id,
)
UNKNOWN = dataclasses.replace(SERVER_2019, kms_counted_id=uuid.uuid4(), sku_id=uuid.uuid4())
REFUSED = HResult.PRODUCT_NOT_ALLOWED


@pytest.mark.parametrize(
    ("options", "server", "office", "unknown"),
    [
        ({}, None, None, None),
        ({"deny_unknown": True}, None, None, REFUSED),
        ({"allow": ["office*"]}, REFUSED, None, REFUSED),
        ({"allow": ["*"], "deny": ["*server*"]}, REFUSED, None, REFUSED),
        ({"deny": [str(SERVER_2019.sku_id)]}, REFUSED, None, None),
        ({"deny": [str(OFFICE.kms_id)]}, None, REFUSED, None),
        ({"allow": ["WINDOWS SERVER 2019*"]}, None, REFUSED, REFUSED),
    ],
)
def test_policy_decisions(
    options: dict[str, object],
    server: HResult | None,
    office: HResult | None,
    unknown: HResult | None,
) -> None:
    policy = ProductPolicy(CATALOG, **options)  # type: ignore[arg-type]
    assert (policy(SERVER_2019), policy(OFFICE_REQUEST), policy(UNKNOWN)) == (
        server,
        office,
        unknown,
    )
    assert policy.active == bool(options)


def test_empty_pattern_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        ProductPolicy(CATALOG, deny=[" "])


async def test_denied_product_gets_0xC004F042_from_the_host() -> None:
    settings = ServeSettings(listen=["127.0.0.1:0"], deny_product=["windows server*"])
    async with KmsHost(settings) as host:
        with pytest.raises(ActivationError) as info:
            await activate_once(host.port)
        assert info.value.hresult == REFUSED
        assert host.stats.refusals == 1
