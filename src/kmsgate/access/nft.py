"""Kernel enforcement of activation windows: an nftables set of windowed source addresses."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final, Literal, get_args

from kmsgate.errors import KmsgateError
from kmsgate.net import canonical_address

log = logging.getLogger("kmsgate.nft")

Hook = Literal["forward", "input"]
HOOKS: Final[tuple[Hook, ...]] = get_args(Hook)
SET_V4: Final = "windows_v4"
SET_V6: Final = "windows_v6"
DEFAULT_TABLE: Final = "kmsgate"
DEFAULT_PORT: Final = 1688
MAX_SECONDS: Final = 7 * 86400
# A strict subset of nft identifiers: nothing that could end a statement or open a string.
_TABLE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# Passed as one argv item to `ip netns exec`, never through a shell; just no paths or options.
_NETNS_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# nft (and the kernel) say ENOENT when the element, set or table is not there.
_NOT_FOUND: Final = "No such file or directory"


class NftError(KmsgateError):
    """An nft command failed or could not run; `stderr` holds what nft said."""

    def __init__(self, message: str, stderr: str = "", returncode: int | None = None) -> None:
        super().__init__(f"{message}: {stderr.strip()}" if stderr.strip() else message)
        self.stderr = stderr
        self.returncode = returncode


def check_table(table: str) -> str:
    """Return `table` if it is a safe nftables table name, else raise ValueError."""
    if not isinstance(table, str) or not _TABLE_RE.fullmatch(table):
        raise ValueError(f"invalid nftables table name {table!r}: use [A-Za-z][A-Za-z0-9_]*")
    return table


def check_port(port: int) -> int:
    """Return `port` if it is a TCP port number, else raise ValueError."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"invalid TCP port {port!r}")
    return port


def check_hooks(hooks: Iterable[str]) -> tuple[Hook, ...]:
    """Normalise hook names to a duplicate-free tuple in canonical order, else ValueError."""
    if isinstance(hooks, str):  # a lone name, not its letters
        hooks = (hooks,)
    wanted = set()
    for hook in hooks:
        if hook not in HOOKS:
            raise ValueError(f"invalid hook {hook!r}: use one of {', '.join(HOOKS)}")
        wanted.add(hook)
    return tuple(h for h in HOOKS if h in wanted)


def normalize_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an IP address for a set element; IPv4-mapped IPv6 becomes IPv4, scope ids go."""
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d, but the packets the kernel
    # filters are IPv4 (canonical_address); a scope id (fe80::1%eth0) is not part of the address.
    try:
        parsed = ipaddress.ip_address(address)  # strictly an address: no brackets, no port
    except ValueError:
        raise ValueError(f"invalid IP address {address!r}") from None
    return ipaddress.ip_address(canonical_address(str(parsed)).partition("%")[0])


def seconds_left(expires_at: datetime, now: datetime) -> int:
    """Whole seconds until `expires_at`, rounded up so the kernel never closes early; 0 if past."""
    return max(0, math.ceil((expires_at - now).total_seconds()))


def ruleset(
    table: str = DEFAULT_TABLE,
    port: int = DEFAULT_PORT,
    hooks: Iterable[str] = ("forward",),
    *,
    reject: bool = False,
) -> str:
    """The idempotent `nft -f` transaction creating the table, its sets and the hook chains.

    Set elements survive re-application; chains of hooks not asked for are deleted.
    """
    table = check_table(table)
    port = check_port(port)
    wanted = check_hooks(hooks)
    verdict = "reject with tcp reset" if reject else "drop"
    lines = [
        f"# kmsgate: only sources holding an activation window reach TCP port {port}",
        f"table inet {table} {{",
        f"\tset {SET_V4} {{",
        "\t\ttype ipv4_addr",
        "\t\tflags timeout",
        "\t}",
        f"\tset {SET_V6} {{",
        "\t\ttype ipv6_addr",
        "\t\tflags timeout",
        "\t}",
    ]
    for hook in HOOKS:
        lines.append(f"\tchain {hook} {{")
        if hook in wanted:
            lines.append(f"\t\ttype filter hook {hook} priority filter; policy accept;")
        # An unwanted chain is declared too (empty, so a no-op when it exists) so that the
        # flush and delete below cannot fail on a table that never had it.
        lines.append("\t}")
    lines.append("}")
    for hook in HOOKS:
        # Flushing makes re-application replace the rules instead of appending duplicates.
        lines.append(f"flush chain inet {table} {hook}")
        if hook not in wanted:
            lines.append(f"delete chain inet {table} {hook}")
    for hook in wanted:
        rule = f"add rule inet {table} {hook} tcp dport {port}"
        lines += [
            # A connection admitted while its window was open keeps flowing after the window
            # is consumed (revoked) or times out: only new connections need a window.
            f"{rule} ct state established,related accept",
            f"{rule} ip saddr @{SET_V4} accept",
            f"{rule} ip6 saddr @{SET_V6} accept",
            f"{rule} {verdict}",
        ]
    return "\n".join(lines) + "\n"


def _set_for(address: str) -> tuple[str, str]:
    parsed = normalize_address(address)
    return (SET_V4 if parsed.version == 4 else SET_V6), str(parsed)


class NftWindowSet:
    """Mirrors open activation windows into an nftables `inet` table the kernel enforces."""

    def __init__(
        self,
        table: str = DEFAULT_TABLE,
        *,
        port: int = DEFAULT_PORT,
        hooks: Sequence[str] = ("forward",),
        install_rules: bool = True,
        reject: bool = False,
        netns: str | None = None,
        nft: str = "nft",
        timeout: float = 10.0,
    ) -> None:
        self.table = check_table(table)
        self.port = check_port(port)
        self.hooks = check_hooks(hooks) if install_rules else ()
        self.reject = reject
        if netns is not None and not _NETNS_RE.fullmatch(netns):
            raise ValueError(f"invalid network namespace name {netns!r}")
        self.netns = netns
        self.nft = nft
        self.timeout = timeout

    def _argv(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns is not None else []
        return [*prefix, self.nft, *args]

    async def _run(self, args: Sequence[str], script: str | None = None) -> str:
        """Run nft with `script` on stdin; return stdout or raise NftError."""
        argv = self._argv(*args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise NftError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(script.encode() if script is not None else None), self.timeout
            )
        except TimeoutError:
            raise NftError(f"{' '.join(argv)} took longer than {self.timeout:g} s") from None
        finally:
            # Also on cancellation: never leave an nft process behind.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        stderr = err.decode(errors="replace")
        if proc.returncode != 0:
            raise NftError(f"{' '.join(argv)} failed", stderr, proc.returncode)
        return out.decode(errors="replace")

    async def apply(self, script: str) -> None:
        """Apply an nft script as one atomic transaction."""
        await self._run(["-f", "-"], script)

    async def ensure(self) -> None:
        """Create the table, sets and (with install_rules) chains; safe to repeat."""
        await self.apply(ruleset(self.table, self.port, self.hooks, reject=self.reject))
        log.debug("nftables table inet %s ready (hooks: %s)", self.table, self.hooks or "none")

    async def allow(self, address: str, seconds: int) -> None:
        """Let `address` through for `seconds` (its window's time left); replaces an earlier one."""
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise ValueError(f"seconds must be an int, not {seconds!r}")
        if not 1 <= seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be within 1..{MAX_SECONDS}, not {seconds}")
        name, element = _set_for(address)
        where = f"inet {self.table} {name}"
        # add+delete+add in one transaction sets the new timeout on every kernel, whether or
        # not the element exists (older kernels keep an existing element's timeout on add).
        await self.apply(
            f"add element {where} {{ {element} }}\n"
            f"delete element {where} {{ {element} }}\n"
            f"add element {where} {{ {element} timeout {seconds}s }}\n"
        )
        log.debug("nft: %s allowed for %d s", element, seconds)

    async def revoke(self, address: str) -> None:
        """Stop letting `address` through; nothing happens when it is not in the set."""
        name, element = _set_for(address)
        try:
            await self.apply(f"delete element inet {self.table} {name} {{ {element} }}\n")
        except NftError as exc:
            if _NOT_FOUND not in exc.stderr:
                raise
        log.debug("nft: %s revoked", element)

    async def elements(self) -> dict[str, int | None]:
        """Addresses in the sets with the seconds until each expires (None: no timeout)."""
        found: dict[str, int | None] = {}
        for name in (SET_V4, SET_V6):
            data = json.loads(await self._run(["-j", "list", "set", "inet", self.table, name]))
            for item in data.get("nftables", []):
                for elem in item.get("set", {}).get("elem", []):
                    if isinstance(elem, dict) and "elem" in elem:
                        found[str(elem["elem"]["val"])] = elem["elem"].get("expires")
                    else:
                        found[str(elem)] = None
        return found

    async def remove(self) -> None:
        """Delete the table with its sets and chains; nothing happens when it is absent."""
        try:
            await self.apply(f"delete table inet {self.table}\n")
        except NftError as exc:
            if _NOT_FOUND not in exc.stderr:
                raise
