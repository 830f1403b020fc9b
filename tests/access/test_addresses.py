"""G3 in each place an address is compared or stored: one canonical form (IPv4-mapped -> IPv4)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from kmsgate.access.accounts.backends import build_backend
from kmsgate.access.accounts.base import LocalSettings
from kmsgate.access.gateway import Gateway
from kmsgate.access.nft import normalize_address
from kmsgate.access.source import SourcePolicy
from kmsgate.auth.passwords import hash_password
from kmsgate.catalog import default_catalog
from kmsgate.net import Peer
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from tests.web.test_portal import forwarded_client

PROXY = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("::ffff:10.1.2.3", (), "10.1.2.3"),  # the portal itself on a dual-stack socket
        ("::ffff:127.0.0.1", ("::ffff:10.1.2.4",), "10.1.2.4"),  # a proxy forwarding mapped
        ("127.0.0.1", ("[::ffff:10.1.2.5]:5555",), "10.1.2.5"),
        ("::ffff:127.0.0.1", ("10.1.2.6", "127.0.0.9"), "10.1.2.6"),  # trusted hop skipped
        ("127.0.0.1", ("10.1.2.7, ::ffff:127.0.0.8",), "10.1.2.7"),  # mapped trusted hop
    ],
)
async def test_portal_addresses_are_canonical(
    peer: str, forwarded: tuple[str, ...], expected: str
) -> None:
    assert await forwarded_client(peer, *forwarded, proxies=PROXY) == expected


def test_policies_and_nftables_see_the_ipv4_address() -> None:
    policy = SourcePolicy.from_strings(["10.0.0.0/8"], ["10.9.0.0/16"])
    assert policy.allows("::ffff:10.1.1.1") and policy.allows("10.1.1.1")
    assert not policy.allows("::ffff:10.9.1.1") and not policy.allows("::ffff:192.0.2.1")
    assert normalize_address("::ffff:10.1.1.1") == ipaddress.ip_address("10.1.1.1")
    assert normalize_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")


async def test_gateway_grants_and_admits_one_identity(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'kms.db'}")
    try:
        await store.add_user("gina", hash_password("pw-gina-1"))
        gateway = Gateway(
            GatewayStore(store),
            build_backend(LocalSettings(), store=store),
            default_catalog(),
            node="gw-1",
        )
        # The portal on a dual-stack socket, the KMS host on an IPv4 one, or the reverse.
        outcome = await gateway.login("gina", "pw-gina-1", "::ffff:10.7.7.7")
        assert outcome.window is not None and outcome.window.address == "10.7.7.7"
        admission = await gateway.admit(Peer.from_socket_name(("::ffff:10.7.7.7", 50123, 0, 0)))
        assert admission is not None and admission.window.id == outcome.window.id
        await gateway.audit.close()
        page = await gateway.store.list_audit(limit=10)
        assert {e.address for e in page.items} == {"10.7.7.7"}
    finally:
        await store.close()
