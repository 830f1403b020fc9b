"""Canonical addresses and typed peers."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmsgate.net import Endpoint, Peer, canonical_address, parse_endpoint


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
    assert parse_endpoint(str(peer)) == Endpoint(peer.address, peer.port)


def test_peer_is_ip() -> None:
    assert Peer("1.2.3.4").is_ip and Peer("fe80::1%eth0").is_ip and not Peer("unknown").is_ip


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("kms.example.com", {"default_port": 1688}, Endpoint("kms.example.com", 1688)),
        ("kms.example.com.:11688", {}, Endpoint("kms.example.com.", 11688)),
        ("10.1.2.3", {}, Endpoint("10.1.2.3")),
        ("[::1]", {"default_port": 53}, Endpoint("::1", 53)),
        ("[::1]:0", {"allow_port_zero": True}, Endpoint("::1", 0)),
        ("fe80::1%eth0", {"default_port": 1688}, Endpoint("fe80::1%eth0", 1688)),
        (" 1688 ", {"bare_port_host": "0.0.0.0"}, Endpoint("0.0.0.0", 1688)),
        ("192.0.2.1:53", {"allow_names": False}, Endpoint("192.0.2.1", 53)),
    ],
)
def test_parse_endpoint_forms(text: str, kwargs: dict[str, Any], expected: Endpoint) -> None:
    assert parse_endpoint(text, **kwargs) == expected


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "thing '': '' is no host name or IP address"),
        (":1688", {}, "'' is no host name or IP address"),
        ("10.0.0.300:1", {}, "'10.0.0.300' is no host name or IP address"),
        ("10.1.1", {}, "'10.1.1' is no host name"),  # inet_aton would read 10.1.0.1
        ("kms_1.example", {}, "is no host name"),
        ("kms-.example", {}, "is no host name"),
        ("ns.example.com", {"allow_names": False}, "'ns.example.com' is no IP address"),
        ("http://kms/", {}, "not a URL or path"),
        ("kms:", {}, "thing 'kms:' has an invalid port"),
        ("kms:0", {}, "has an invalid port"),
        ("kms:65536", {}, "has an invalid port"),
        ("kms:１６８８", {}, "has an invalid port"),  # str.isdigit() alone takes these
        ("kms:+1", {}, "has an invalid port"),
        ("[::1]:", {}, "has an invalid port"),
        ("[::1]x", {}, "must look like [ADDR] or [ADDR]:PORT"),
        ("[::1", {}, "must look like [ADDR] or [ADDR]:PORT"),
        ("[10.0.0.1]:5", {}, "'10.0.0.1' is no IPv6 address"),
        ("2001:db8::1", {"allow_bare_ipv6": False}, "write an IPv6 address as [ADDR]"),
        ("2001:db8::1", {"port_required": True}, "as [ADDR]:PORT"),
        ("2001:db8::zz", {}, "is no IPv6 address"),
        ("10.0.0.1", {"port_required": True}, "must look like ADDR:PORT or [ADDR]:PORT"),
        ("99999", {"bare_port_host": "::"}, "thing '99999' has an invalid port"),
    ],
)
def test_parse_endpoint_rejects_with_a_clear_message(
    text: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_endpoint(text, what="thing", **kwargs)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_an_endpoint_parses_back_from_its_text(address: object, port: int) -> None:
    endpoint = Endpoint(str(address), port)
    assert parse_endpoint(str(endpoint)) == endpoint
