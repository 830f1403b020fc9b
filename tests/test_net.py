"""Canonical addresses and typed peers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmsgate.net import Peer, canonical_address


@pytest.mark.parametrize(
    ("given_text", "expected"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("[::ffff:10.1.2.3]", "10.1.2.3"),
        ("::FFFF:C0A8:0101", "192.168.1.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("2001:DB8::0:1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("::1", "::1"),
        ("unknown", "unknown"),
        ("/run/kms.sock", "/run/kms.sock"),
    ],
)
def test_canonical_address(given_text: str, expected: str) -> None:
    assert canonical_address(given_text) == expected


@given(st.ip_addresses(v=4))
def test_an_ipv4_client_has_one_identity_on_every_listener(address: object) -> None:
    mapped = f"::ffff:{address}"
    assert canonical_address(mapped) == canonical_address(str(address)) == str(address)


@pytest.mark.parametrize(
    ("name", "text", "address", "port"),
    [
        (("::ffff:127.0.0.1", 5000, 0, 0), "127.0.0.1:5000", "127.0.0.1", 5000),
        (("::1", 6000, 0, 0), "[::1]:6000", "::1", 6000),
        (("10.0.0.2", 1688), "10.0.0.2:1688", "10.0.0.2", 1688),
        (None, "unknown", "unknown", None),
        ("/run/kms.sock", "unknown", "unknown", None),
    ],
)
def test_peer_from_socket_name_round_trips_its_text(
    name: object, text: str, address: str, port: int | None
) -> None:
    peer = Peer.from_socket_name(name)
    assert (peer.address, peer.port, str(peer)) == (address, port, text)
    assert Peer.parse(str(peer)) == peer


def test_peer_parse_of_bare_v6_address_has_no_port() -> None:
    assert Peer.parse("2001:db8::1") == Peer("2001:db8::1")
    assert Peer.parse("[::ffff:1.2.3.4]:9") == Peer("1.2.3.4", 9)
    assert Peer("1.2.3.4").is_ip and not Peer("unknown").is_ip
