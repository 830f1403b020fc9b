"""Relay mode: forward each admitted client connection to a genuine KMS host and audit it.

Bytes pass unchanged both ways; a ConversationObserver decodes them on the side so that the
host's `record()` sees the same events (activations, refusals, faults) as for local answers.
This module is the listener's protocol factory; each connection is a RelayConnection.
"""

from __future__ import annotations

from kmsgate.server.host import KmsHost
from kmsgate.server.relay_connection import RelayConnection, RelayStats

DEFAULT_CONNECT_TIMEOUT = 5.0


class Relay:
    """Protocol factory for `loop.create_server`: one RelayConnection per client."""

    def __init__(
        self,
        host: KmsHost,
        upstream: tuple[str, int],
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.host = host
        self.upstream = upstream
        self.connect_timeout = connect_timeout
        self.stats = RelayStats()

    @property
    def upstream_text(self) -> str:
        address, port = self.upstream
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    def __call__(self) -> RelayConnection:
        return RelayConnection(self)


def relay_factory(host: KmsHost, upstream: tuple[str, int]) -> Relay:
    """The protocol factory the node passes to KmsHost.start() in relay mode."""
    return Relay(host, upstream)
