"""Checks `kmsgate serve` runs before it starts anything: listeners, files, accounts, users.

Each problem is one line in the user's words. A wrong setting (an address that is not this
machine's, a missing certificate, a user that does not exist) is a usage error; a right
setting the machine cannot honour now (a port in use, a port needing root) is not.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from kmsgate.access.accounts.base import LdapSettings, Pop3Settings, SqlSettings
from kmsgate.config.addresses import parse_listen
from kmsgate.config.settings import ServeSettings
from kmsgate.systemd import resolve_ids


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason not to start; `usage` when the settings themselves are wrong (exit 2)."""

    message: str
    usage: bool = True


def endpoint(host: str, port: int) -> str:
    """`host:port`, or `[v6]:port` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _socket_activated() -> bool:
    """Whether systemd handed us the listening sockets (then --listen is not bound by us)."""
    return (
        os.environ.get("LISTEN_PID") == str(os.getpid())
        and os.environ.get("LISTEN_FDS", "0") != "0"
    )


def _bind_problem(key: str, host: str, port: int, *, optional_v6: bool) -> Problem | None:
    """Try to bind what the listener will bind (then let go); None when it would work."""
    where = endpoint(host, port)
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return Problem(f"{key}: cannot resolve {host!r} in {where}: {exc.strerror}")
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # As asyncio binds: [::] and 0.0.0.0 are separate listeners.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError as exc:
            if (
                family == socket.AF_INET6
                and optional_v6
                and exc.errno
                in (
                    errno.EAFNOSUPPORT,
                    errno.EADDRNOTAVAIL,
                )
            ):
                continue  # the host skips an unavailable IPv6 listener with a warning
            return _bind_failure(key, where, host, exc)
    return None


def _bind_failure(key: str, where: str, host: str, exc: OSError) -> Problem:
    if exc.errno == errno.EADDRINUSE:
        return Problem(f"{key}: cannot listen on {where}: the port is in use", usage=False)
    if exc.errno == errno.EACCES:
        return Problem(
            f"{key}: cannot listen on {where}: permission denied (ports below 1024 need "
            "root or CAP_NET_BIND_SERVICE)",
            usage=False,
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return Problem(f"{key}: cannot listen on {where}: {host} is not an address of this machine")
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return Problem(f"{key}: cannot listen on {where}: {reason.lower()}", usage=False)


def _listeners(settings: ServeSettings) -> list[Problem]:
    found = []
    if not _socket_activated():
        for text in settings.listen:
            host, port = parse_listen(text)
            # The default [::]:1688 is skipped where IPv6 is off; an explicit one is too.
            problem = _bind_problem("listen", host, port, optional_v6=":" in host)
            if problem:
                found.append(problem)
    if not settings.no_store and not settings.no_web:
        host, port = parse_listen(settings.web)
        problem = _bind_problem("web", host, port, optional_v6=False)
        if problem:
            found.append(problem)
    return found


def _certificate(settings: ServeSettings) -> list[Problem]:
    if settings.no_store or settings.no_web or settings.web_cert is None:
        return []
    assert settings.web_key is not None  # the settings model pairs them
    for key, path in (("web_cert", settings.web_cert), ("web_key", settings.web_key)):
        try:
            path.read_bytes()
        except OSError as exc:
            return [Problem(f"{key}: cannot read {path}: {exc.strerror or exc}")]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.web_cert, settings.web_key)
    except ssl.SSLError as exc:
        return [
            Problem(
                f"web_cert, web_key: {settings.web_cert} and {settings.web_key} are not a PEM "
                f"certificate and its private key ({exc.reason or exc})"
            )
        ]
    return []


def _store(settings: ServeSettings) -> list[Problem]:
    if settings.no_store:
        return []
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        return [Problem(f"data_dir: {settings.data_dir} is not a directory")]
    path = settings.db_path
    if path is None:
        return []
    if path.is_dir():
        return [Problem(f"db: {path} is a directory, not a database file")]
    # The data directory is ours to create; a folder named by --db is not: a typo there
    # would otherwise leave a fresh, empty database somewhere unexpected.
    if settings.db is not None and not path.parent.is_dir():
        return [
            Problem(
                f"db: the folder {path.parent} does not exist (create it first; kmsgate creates "
                "the database file, not its folder)"
            )
        ]
    return []


def _accounts(settings: ServeSettings) -> list[Problem]:
    if not settings.gateway:
        return []
    accounts = settings.accounts
    if isinstance(accounts, LdapSettings | Pop3Settings) and accounts.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(accounts.ca_file))
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            return [Problem(f"accounts.ca_file: cannot load {accounts.ca_file}: {reason}")]
    if isinstance(accounts, SqlSettings):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(accounts.url)
        except (ArgumentError, ValueError):
            return [Problem("accounts.url: not a database URL (scheme://user:password@host/db)")]
    return []


def _identity(settings: ServeSettings) -> list[Problem]:
    if settings.group is not None and settings.user is None:
        return [Problem("group: --group needs --user")]
    if settings.user is None:
        return []
    try:
        resolve_ids(settings.user, settings.group)
    except ValueError as exc:
        key = "group" if "group" in str(exc) else "user"
        return [Problem(f"{key}: {exc} on this machine")]
    return []


def _host_keys(settings: ServeSettings) -> list[Problem]:
    """The catalogue must load and hold host keys for the host build the host claims."""
    from kmsgate.catalog.loading import load_catalog
    from kmsgate.server.identity import choose_host_build

    try:
        catalog = load_catalog(settings.catalog)
    except ValueError as exc:
        return [Problem(f"catalog: {exc}")]
    try:
        choose_host_build(catalog, settings.host_build, settings.ndr64)
    except ValueError as exc:
        return [Problem(f"host_build: {exc}")]
    return []


def _log_file(settings: ServeSettings) -> list[Problem]:
    path = settings.log_file
    if path is None:
        return []
    try:
        with Path(path).open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        return [Problem(f"log_file: cannot write {path}: {exc.strerror or exc}")]
    return []


def _dns(settings: ServeSettings) -> list[Problem]:
    if not settings.dns_publish:
        return []
    from kmsgate.dns.records import SrvRecord
    from kmsgate.dns.update import keyring_from_settings, server_from_settings

    found = []
    for key, check in (
        ("dns_server", lambda: server_from_settings(settings)),
        ("dns_tsig_secret", lambda: keyring_from_settings(settings)),
    ):
        try:
            check()
        except ValueError as exc:
            found.append(Problem(f"{key}: {exc}"))
    if settings.dns_host is not None and settings.dns_domain is not None:
        try:
            SrvRecord.make(settings.dns_domain, settings.dns_host, settings.dns_port)
        except ValueError as exc:
            found.append(Problem(f"dns_host: {exc}"))
    return found


def _nft(settings: ServeSettings) -> list[Problem]:
    if settings.nft and shutil.which("nft") is None:
        return [Problem("nft: the nft command is not installed (Debian: apt install nftables)")]
    return []


def preflight(settings: ServeSettings) -> list[Problem]:
    """Every reason the settings cannot start here; empty when serve may start."""
    problems: list[Problem] = []
    checks = (
        _identity,
        _host_keys,
        _log_file,
        _store,
        _certificate,
        _accounts,
        _dns,
        _nft,
        _listeners,
    )
    for check in checks:
        problems.extend(check(settings))
    return problems
