"""peer_of: the canonical client address, the same whether or not it was seen before."""

from __future__ import annotations

from typing import Any

import pytest

from kmsgate.net import Peer
from kmsgate.server import transport
from kmsgate.server.transport import peer_of


class _Named:
    """The one thing peer_of reads of a transport: its peername."""

    def __init__(self, peername: Any) -> None:
        self._peername = peername

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peername if name == "peername" else default


@pytest.mark.parametrize(
    "peername",
    [
        ("10.1.2.3", 49152),
        ("::ffff:10.1.2.3", 49152, 0, 0),
        ("2001:DB8::1", 1688, 0, 0),
        ("fe80::1%eth0", 5, 0, 2),
        ("not an address", 7),
        "/run/kmsgate.sock",
        None,
        ("10.1.2.3",),
        (b"10.1.2.3", 7),  # not a str (no loop gives one): made text as the uncached path does
        (167838211, 7),
    ],
)
def test_peer_of_equals_the_uncached_peer_every_time(peername: Any) -> None:
    expected = Peer.from_socket_name(peername)
    first = peer_of(_Named(peername))  # type: ignore[arg-type]
    again = peer_of(_Named(peername))  # type: ignore[arg-type]
    assert first == again == expected


def test_many_addresses_stay_correct_past_the_cache_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_CANONICAL_LIMIT", 8)
    monkeypatch.setattr(transport, "_CANONICAL", {})
    for round_ in range(2):
        for index in range(40):
            name = (f"::ffff:10.0.{round_}.{index}", 1000 + index, 0, 0)
            assert peer_of(_Named(name)) == Peer(f"10.0.{round_}.{index}", 1000 + index)  # type: ignore[arg-type]
    assert len(transport._CANONICAL) <= 8
