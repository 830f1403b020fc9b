"""Loopback ports for servers a test starts, free of races with other tests.

Asking the kernel for port 0 and closing the socket hands out an ephemeral port that any
other process (another xdist worker's server, a client's outgoing connection) may take
before our server binds it. Ports here come from below the ephemeral range, from a slice of
their own for each xdist worker, handed out in turn: no other test asks for them, and the
kernel never picks them for outgoing connections.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

__all__ = ["closed_port", "free_port"]

_FIRST = 20_000  # below Linux's default ephemeral range, 32768-60999
_SLICE = 600
_SLICES = 20  # 20 000 .. 31 999


def _slice_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) % _SLICES
    return os.getpid() % _SLICES  # a lone run: any slice, the bind check below still holds


_BASE = _FIRST + _slice_index() * _SLICE
_next = os.getpid() % _SLICE  # two runs sharing a slice start at different places


def _bindable(port: int, hosts: Sequence[str], udp: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for host in hosts:
        for kind in kinds:
            with socket.socket(socket.AF_INET, kind) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    return False
    return True


def free_port(*, hosts: Sequence[str] = ("127.0.0.1",), udp: bool = False) -> int:
    """A TCP port (and UDP with `udp`) free on every address of `hosts`, not handed out before."""
    global _next
    for _ in range(_SLICE):
        port = _BASE + _next
        _next = (_next + 1) % _SLICE
        if _bindable(port, hosts, udp):
            return port
    raise RuntimeError(f"no free port in {_BASE}..{_BASE + _SLICE - 1} on {', '.join(hosts)}")


def closed_port() -> int:
    """A loopback port nothing listens on, nor will while the test runs (connections refused)."""
    return free_port(hosts=("127.0.0.1", "127.0.0.2"))
