"""Where a request comes from: the peer, or behind a `--trust-proxy` its forwarded client.

uvicorn's ProxyHeadersMiddleware walks X-Forwarded-For: only a trusted peer's header is read,
and the right-most entry that is no trusted proxy becomes the request's client. kmsgate adds
the IPv4-mapped form of each trusted IPv4 network (a dual-stack listener sees a proxy at
10.0.0.5 as ::ffff:10.0.0.5) and compares and stores addresses in one canonical form.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from fastapi import FastAPI
from starlette.requests import Request
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from kmsgate.net import canonical_address

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_hosts(networks: Sequence[IPNetwork]) -> list[str]:
    """The networks as uvicorn's trusted hosts, each IPv4 one in its IPv4-mapped form too."""
    hosts = []
    for network in networks:
        hosts.append(str(network))
        if isinstance(network, ipaddress.IPv4Network):
            hosts.append(f"::ffff:{network.network_address}/{96 + network.prefixlen}")
    return hosts


def add_proxy_headers(app: FastAPI, networks: Sequence[IPNetwork]) -> None:
    """Let uvicorn's proxy-headers handling rewrite the client of these networks' requests."""
    if networks:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted_hosts(networks))


def client_address(request: Request) -> str | None:
    """The client's canonical IP (IPv4-mapped becomes IPv4); None when it is no IP address.

    None too when a trusted proxy forwarded something that is not an address where the
    client should be: no entry further left, which anyone can write, is believed instead.
    """
    if request.client is None:
        return None
    address = canonical_address(request.client.host)
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None
