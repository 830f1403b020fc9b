"""Process integration with systemd: inherited sockets, dropping root, sd_notify, watchdog."""

from __future__ import annotations

import asyncio
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


# ---------------------------------------------------------------- sd_notify (Type=notify)


def notify_socket(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The service manager's notification socket from NOTIFY_SOCKET, or None outside systemd.

    `@name` is a Linux abstract socket (a leading NUL byte); other values are file paths.
    """
    env = os.environ if environ is None else environ
    value = env.get("NOTIFY_SOCKET", "")
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        # vsock: (VMs) and relative paths: not something a service on this host is given.
        log.warning("NOTIFY_SOCKET=%r is not a socket path; not notifying systemd", value)
    return None


def sd_notify(address: str | bytes | None, *fields: str) -> bool:
    """Send `KEY=VALUE` fields (READY=1, STOPPING=1, WATCHDOG=1, STATUS=...) in one datagram.

    False when there is no socket or sending failed; a notification never stops the server.
    """
    if address is None:
        return False
    message = "\n".join(fields).encode()
    # Non-blocking: called from the event loop, it must not wait on a manager that stopped
    # reading (a full queue is reported like any other failure).
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    try:
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.connect(address)
            sock.send(message)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", fields[0] if fields else "", exc)
        return False
    return True


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked.

    WATCHDOG_PID, when set, names the process systemd watches: another process's value is
    not ours to answer.
    """
    env = os.environ if environ is None else environ
    watched = env.get("WATCHDOG_PID")
    if watched and watched != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


async def watchdog_pings(address: str | bytes | None, interval: float) -> None:
    """Ping systemd's watchdog from the event loop until cancelled: a stuck loop stops the pings."""
    while True:
        sd_notify(address, "WATCHDOG=1")
        await asyncio.sleep(interval)
