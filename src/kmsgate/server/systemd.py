"""Process integration: sockets inherited from systemd and dropping root after binding."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("kmsgate.server")
SD_LISTEN_FDS_START = 3


def _listen_fds(env: Mapping[str, str]) -> range:
    """The descriptors socket activation passed to this very process (empty if none)."""
    if env.get("LISTEN_PID") != str(os.getpid()):
        return range(0)
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return range(0)
    return range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(0, count))


def protect_inherited_sockets(environ: Mapping[str, str] | None = None) -> int:
    """Make the descriptors systemd passed close-on-exec now; returns how many there are.

    systemd hands them over inheritable. Call this before starting any child process:
    uvloop's subprocesses ignore close_fds, so an inheritable listening socket would stay
    open in the record writer, and keep the port bound after the service stopped.
    """
    fds = _listen_fds(os.environ if environ is None else environ)
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:  # not open: inherited_sockets() reports it when it gets there
            log.debug("inherited descriptor %d: %s", fd, exc)
    return len(fds)


def inherited_sockets(environ: dict[str, str] | None = None) -> list[socket.socket]:
    """Listening sockets passed by systemd socket activation (LISTEN_FDS), else []."""
    sockets = []
    for fd in _listen_fds(os.environ if environ is None else environ):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            raise OSError(f"inherited descriptor {fd} is not a TCP socket")
        sockets.append(sock)
    # The descriptors are ours now; children must not think they were activated too.
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return sockets


def resolve_ids(user: str, group: str | None) -> tuple[int, int]:
    """(uid, gid) of `user` and `group` (default: the user's primary group)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no user named {user!r}") from None
    if group is None:
        return entry.pw_uid, entry.pw_gid
    try:
        return entry.pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group named {group!r}") from None


def hand_over(path: Path, uid: int, gid: int) -> None:
    """Give the data directory (and what it holds) to the unprivileged user before we drop."""
    path.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, uid, gid, follow_symlinks=False)
    os.chown(path, uid, gid)


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid for good (supplementary groups cleared); only meaningful as root."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("could not drop privileges")
    log.info("running as uid %d gid %d", uid, gid)
