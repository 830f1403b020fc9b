"""CIDR source policy: private networks by default, deny wins, mapped addresses."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmsgate.access.source import SourcePolicy, parse_network

DEFAULT = SourcePolicy.from_strings(None)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.31.255.1", "192.168.0.9", "169.254.1.1", "::1", "fe80::1%eth0",
     "fd00::5", "::ffff:192.168.1.1"],
)  # fmt: skip
def test_default_allows_private_networks(address: str) -> None:
    assert DEFAULT.allows(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:8.8.8.8", "not-an-ip", ""]
)
def test_default_denies_everything_else(address: str) -> None:
    assert not DEFAULT.allows(address)


def test_deny_wins_over_allow() -> None:
    policy = SourcePolicy.from_strings(["10.0.0.0/8"], ["10.9.0.0/16"])
    assert policy.allows("10.1.0.1")
    assert not policy.allows("10.9.3.4")


def test_explicit_allow_replaces_the_default() -> None:
    policy = SourcePolicy.from_strings(["203.0.113.0/24"])
    assert policy.allows("203.0.113.7")
    assert not policy.allows("127.0.0.1")


def test_bad_cidr_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not an IP network"):
        parse_network("10.0.0.0/33")


@given(st.ip_addresses())
def test_policy_matches_ipaddress_membership(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    allow = [parse_network("10.0.0.0/8"), parse_network("2001:db8::/32")]
    policy = SourcePolicy(tuple(allow), (parse_network("10.5.0.0/16"),))
    expected = any(ip in n for n in allow) and ip not in parse_network("10.5.0.0/16")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return
    assert policy.allows(str(ip)) == expected


def test_mapped_networks_judge_ipv4_peers() -> None:
    # Peers are canonical (an IPv4 client is never ::ffff:a.b.c.d): so must the networks be.
    assert parse_network("::ffff:10.0.0.0/104") == ipaddress.IPv4Network("10.0.0.0/8")
    assert parse_network("::ffff:127.0.0.7") == ipaddress.IPv4Network("127.0.0.7/32")
    assert parse_network("::ffff:0:0/96") == ipaddress.IPv4Network("0.0.0.0/0")
    assert parse_network("::/0") == ipaddress.IPv6Network("::/0")  # not only mapped space
    policy = SourcePolicy.from_strings(["::ffff:10.0.0.0/104"], ["::ffff:10.9.0.0/112"])
    assert policy.allows("10.1.2.3") and policy.allows("::ffff:10.1.2.3")
    assert not policy.allows("10.9.0.1") and not policy.allows("::ffff:10.9.0.1")


@given(st.ip_addresses(v=4), st.integers(0, 32), st.ip_addresses(v=4))
def test_a_mapped_network_decides_as_its_ipv4_network(
    base: ipaddress.IPv4Address, prefix: int, peer: ipaddress.IPv4Address
) -> None:
    network = ipaddress.IPv4Network((base, prefix), strict=False)
    mapped = f"::ffff:{network.network_address}/{prefix + 96}"
    for allow, deny in (([mapped], []), (["0.0.0.0/0"], [mapped])):
        written = SourcePolicy.from_strings(allow, deny)
        meant = SourcePolicy.from_strings(
            [str(network) if a == mapped else a for a in allow],
            [str(network) for _ in deny],
        )
        assert written.allows(str(peer)) == meant.allows(str(peer))
