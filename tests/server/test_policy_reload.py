"""A reload (SIGHUP) replaces the product policy of a running host, connections kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kmsgate.config.settings import ServeSettings
from kmsgate.protocol.errors import ActivationError
from kmsgate.server.host import KmsHost
from tests.support.kms import RawClient, make_request


async def test_reloaded_product_policy_applies_to_an_open_connection(tmp_path: Path) -> None:
    settings = ServeSettings(listen=["127.0.0.1:0"], data_dir=tmp_path)
    async with KmsHost(settings) as host:
        client = await RawClient.connect(host.port)
        try:
            await client.bind()
            assert (await client.activate(6, make_request(6))).ok
            host.apply_policies(
                settings.model_copy(update={"deny_product": ["Windows Server 2019*"]})
            )
            with pytest.raises(ActivationError, match="0xC004F042"):
                await client.activate(6, make_request(6))
            host.apply_policies(settings)
            assert (await client.activate(6, make_request(6))).ok
        finally:
            await client.close()
    assert (host.stats.activations, host.stats.refusals) == (2, 1)


async def test_a_reload_leaves_what_needs_a_restart(tmp_path: Path) -> None:
    # docs/operations.md: limits and the node name need a restart; a reload must not
    # half-apply them (connections read them from the host, not from its settings).
    settings = ServeSettings(
        listen=["127.0.0.1:0"], data_dir=tmp_path, max_requests_per_connection=2, node_name="a"
    )
    async with KmsHost(settings) as host:
        host.apply_policies(
            settings.model_copy(update={"max_requests_per_connection": 100, "node_name": "b"})
        )
        assert (host.request_limit, host.node_name) == (2, "a")
        client = await RawClient.connect(host.port)
        try:
            await client.bind()
            for _ in range(2):
                assert (await client.activate(6, make_request(6))).ok
            for _ in range(100):
                if host.stats.request_limit_closes:
                    break
                await asyncio.sleep(0.02)
        finally:
            await client.close()
    assert host.stats.request_limit_closes == 1
