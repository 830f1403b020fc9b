"""Listen and public addresses of the settings, split into host and port."""

from __future__ import annotations

from kmsgate.net import parse_endpoint

DEFAULT_LISTEN = ["0.0.0.0:1688", "[::]:1688"]


def parse_listen(text: str) -> tuple[str, int]:
    """Split `ADDR:PORT`, `[V6]:PORT` or a bare port (all addresses) into (host, port)."""
    endpoint = parse_endpoint(
        text,
        port_required=True,
        allow_port_zero=True,
        bare_port_host="0.0.0.0",
        what="listen address",
    )
    assert endpoint.port is not None  # port_required
    return endpoint.host, endpoint.port


def parse_public_address(text: str) -> tuple[str, int | None]:
    """Split `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT` (a DNS name or an IP address)."""
    endpoint = parse_endpoint(text, allow_bare_ipv6=False, what="public address")
    return endpoint.host, endpoint.port
