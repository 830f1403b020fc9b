"""Typed network addresses: the one `HOST:PORT` parser, and peers in one canonical form."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Final

_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_host_name(text: str) -> bool:
    """Whether `text` is a syntactically valid DNS host name (RFC 1123; the last label not
    all digits, so a mistyped IPv4 address is not taken for a name)."""
    labels = text.removesuffix(".").split(".")
    if len(text) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    return not labels[-1].isdigit()


def is_ip_address(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (an IPv6 zone such as `%eth0` allowed)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _bracketed(host: str, port: int | None) -> str:
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host (DNS name or IP address, as written) and a port (None: not given, no default)."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        return _bracketed(self.host, self.port)


def parse_endpoint(
    text: str,
    *,
    default_port: int | None = None,
    port_required: bool = False,
    allow_port_zero: bool = False,
    allow_names: bool = True,
    allow_bare_ipv6: bool = True,
    bare_port_host: str | None = None,
    what: str = "address",
) -> Endpoint:
    """Parse `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`, a bare IPv6 address (`allow_bare_ipv6`)
    or a bare `PORT` on `bare_port_host`; a missing port is `default_port`.

    ValueError names `what` and the text."""
    text = text.strip()
    if bare_port_host is not None and text.isdigit():
        return Endpoint(bare_port_host, _port(text, allow_port_zero, what))
    bracket_form = "[ADDR]:PORT" if port_required else "[ADDR] or [ADDR]:PORT"
    if "/" in text:
        raise ValueError(f"{what} {text!r} must be HOST[:PORT], not a URL or path")
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or rest[:1] not in ("", ":"):
            raise ValueError(f"{what} {text!r} must look like {bracket_form}")
        if not _is_ipv6(host):
            raise ValueError(f"{what} {text!r}: {host!r} is no IPv6 address")
        if rest:
            port_text = rest[1:]
    elif text.count(":") > 1:
        if not allow_bare_ipv6 or port_required:
            raise ValueError(f"{what} {text!r}: write an IPv6 address as {bracket_form}")
        if not _is_ipv6(text):
            raise ValueError(f"{what} {text!r}: {text!r} is no IPv6 address")
        host = text
    else:
        host, sep, after = text.partition(":")
        if sep:
            port_text = after
        if not is_ip_address(host) and not (allow_names and is_host_name(host)):
            kind = "host name or IP address" if allow_names else "IP address"
            raise ValueError(f"{what} {text!r}: {host!r} is no {kind}")
    if port_text is None:
        if port_required:
            raise ValueError(f"{what} {text!r} must look like ADDR:PORT or [ADDR]:PORT")
        return Endpoint(host, default_port)
    return Endpoint(host, _port(port_text, allow_port_zero, what, text))


def _port(port_text: str, allow_zero: bool, what: str, text: str | None = None) -> int:
    lowest = 0 if allow_zero else 1
    if not (port_text.isascii() and port_text.isdigit()) or not lowest <= int(port_text) <= 65535:
        raise ValueError(f"{what} {text or port_text!r} has an invalid port")
    return int(port_text)


def canonical_address(text: str) -> str:
    """The address as kmsgate compares and stores it: IPv4-mapped IPv6 becomes plain IPv4.

    A dual-stack listener (`[::]:1688`) sees IPv4 clients as `::ffff:a.b.c.d`, while an IPv4
    listener or a web proxy sees `a.b.c.d`; without this the same client has two identities.
    Text that is not an IP address (a Unix socket path, "unknown") is returned unchanged.
    """
    scope = ""
    bare = text.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if "%" in bare:
        bare, _, zone = bare.partition("%")
        scope = f"%{zone}"
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return f"{address}{scope}"
    return str(address)


# Built for every connection: a native record (kmsgate/values.py).
@dataclass(init=False, unsafe_hash=True, slots=True)
class Peer:
    """The remote end of a connection, its address canonical (see `canonical_address`)."""

    address: Final[str]
    port: Final[int | None]

    def __init__(self, address: str, port: int | None = None) -> None:
        self.address = address
        self.port = port

    @classmethod
    def from_socket_name(cls, name: Any) -> Peer:
        """From a socket's `peername` extra info (a tuple, a path, or None)."""
        if isinstance(name, tuple) and len(name) >= 2:
            return cls(canonical_address(str(name[0])), int(name[1]))
        return cls("unknown")

    @property
    def is_ip(self) -> bool:
        """Whether the address is an IP address (not "unknown" or a socket path)."""
        try:
            ipaddress.ip_address(self.address.partition("%")[0])
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return _bracketed(self.address, self.port)
