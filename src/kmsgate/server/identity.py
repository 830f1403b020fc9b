"""The host's identity, as a genuine KMS host has one: its build, LCID, HWID and held host keys.

A genuine host holds one Windows CSVLK (chosen by its OS build) and one CSVLK per Office version
it can host, and answers every KMS id a CSVLK covers with that CSVLK's single ePID. The
generated values are kept in an identity file so that they survive restarts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final

from kmsgate.catalog import Catalog, Csvlk, HostBuild
from kmsgate.errors import KmsgateError
from kmsgate.protocol.engine import EpidProvider
from kmsgate.protocol.epid import (
    parse_epid,
    parse_epid_option,
    parse_hwid,
    random_epid,
    random_hwid,
)
from kmsgate.protocol.messages import KmsRequest

log: Final = logging.getLogger("kmsgate.server")

DEFAULT_HOST_BUILD: Final = 26100
IDENTITY_FORMAT: Final = "kmsgate-identity/1"


class IdentityError(KmsgateError, ValueError):
    """The identity settings cannot describe a host (unknown build, bad override...)."""


def key_name(csvlk: Csvlk) -> str:
    """The name `--epid NAME=EPID` uses for a held key: "windows", "office2010" ... "office2024"."""
    if csvlk.is_office:
        return csvlk.host_key_family.replace("-", "")
    return "windows"


def choose_host_build(catalog: Catalog, build: int | None, ndr64: bool) -> HostBuild:
    """The configured host build, else 26100, else (without NDR64) the newest pre-NDR64 server."""
    if build is None:
        if ndr64:
            build = DEFAULT_HOST_BUILD
        else:
            # A genuine host's NDR64 support follows its build: Windows 7 / 2008 R2 had none.
            older = [
                b
                for b in catalog.host_builds
                if not b.uses_ndr64 and b.use_for_epid and _can_host(catalog, b.build)
            ]
            if not older:
                raise IdentityError("the catalogue has no host build without NDR64")
            build = max(older, key=lambda b: b.build).build
    host = catalog.host_build(build)
    if host is None or not _can_host(catalog, build):
        usable = ", ".join(str(b.build) for b in catalog.host_builds if _can_host(catalog, b.build))
        raise IdentityError(f"host build {build} cannot run a KMS host; choose one of {usable}")
    return host


def _can_host(catalog: Catalog, build: int) -> bool:
    genuine = catalog.genuine_host(build)
    return genuine is not None and genuine.windows_csvlk_id is not None


def held_csvlks(catalog: Catalog, build: int) -> tuple[Csvlk, ...]:
    """The Windows CSVLK and the Office CSVLKs a genuine host of this build holds."""
    genuine = catalog.genuine_host(build)
    if genuine is None or genuine.windows_csvlk_id is None:
        raise IdentityError(f"host build {build} holds no host key")
    keys = []
    for csvlk_id in (genuine.windows_csvlk_id, *genuine.office_csvlk_ids):
        csvlk = catalog.csvlk(csvlk_id)
        if csvlk is None:
            raise IdentityError(f"host build {build}: CSVLK {csvlk_id} missing from the catalogue")
        keys.append(csvlk)
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class HeldKey:
    """One host key this host holds, the ePID it answers with, and the KMS ids it covers."""

    name: str
    csvlk: Csvlk
    epid: str
    source: str  # "generated", "saved" or "configured"


@dataclass
class HostIdentity:
    """Answers each request with the ePID of the held key covering its KMS id."""

    catalog: Catalog
    host_build: HostBuild
    lcid: int
    hwid: bytes
    keys: tuple[HeldKey, ...]
    per_request: bool = False
    rng: random.Random = field(default_factory=random.SystemRandom)
    today: date = field(default_factory=date.today)
    # Keyed by the ids' integers: a UUID's __hash__ and __eq__ run interpreted.
    _by_kms: dict[int, HeldKey] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_kms = {}
        # The Windows key goes first, so an Office key covering the same id would win.
        for held in self.keys:
            for kms_id in held.csvlk.activates_kms_ids:
                self._by_kms[kms_id.int] = held

    @property
    def windows(self) -> HeldKey:
        return self.keys[0]

    def key_for(self, kms_id: uuid.UUID) -> HeldKey | None:
        """The held key covering a KMS id (a superseded placeholder counts as its genuine id)."""
        held = self._by_kms.get(kms_id.int)
        if held is None:
            held = self._by_kms.get(self.catalog.genuine_kms_id(kms_id).int)
        return held

    def covers(self, kms_id: uuid.UUID) -> bool:
        """Whether a held key activates this KMS id (a genuine host refuses the others)."""
        return self.key_for(kms_id) is not None

    def counter_for(self, request: KmsRequest) -> str:
        """The client counter a request counts in: its host key's (Windows for the rest)."""
        held = self.key_for(request.kms_counted_id)
        return held.name if held is not None else self.windows.name

    def epid_for(self, request: KmsRequest) -> str:
        """The ePID for the request's KMS id; ids no key covers get the Windows key's."""
        held = self.key_for(request.kms_counted_id) or self.windows
        if self.per_request and held.source != "configured":
            return str(random_epid(held.csvlk, self.host_build, self.lcid, self.rng, self.today))
        return held.epid

    @property
    def provider(self) -> EpidProvider:
        return self.epid_for

    def describe(self) -> dict[str, Any]:
        """The identity as JSON values (for `kmsgate identity show` and the start-up log)."""
        return {
            "host_build": self.host_build.build,
            "host_build_name": self.host_build.name,
            "platform_id": self.host_build.platform_id,
            "lcid": self.lcid,
            "hwid": self.hwid.hex().upper(),
            "keys": [
                {
                    "name": held.name,
                    "csvlk": held.csvlk.name,
                    "csvlk_id": str(held.csvlk.id),
                    "group_id": held.csvlk.group_id,
                    "epid": "per-request"
                    if self.per_request and held.source != "configured"
                    else held.epid,
                    "source": held.source,
                    "products": sorted(
                        kms.name
                        for kms_id in held.csvlk.activates_kms_ids
                        if (kms := self.catalog.kms_id(kms_id)) is not None
                        and kms.superseded_by is None
                    ),
                }
                for held in self.keys
            ],
        }


def _fits(epid_text: str, csvlk: Csvlk, host: HostBuild, lcid: int) -> bool:
    """Whether a saved ePID still describes this key on this host build and LCID."""
    try:
        epid = parse_epid(epid_text)
    except ValueError:
        return False
    return (
        epid.group_id == csvlk.group_id
        and csvlk.has_key_id(epid.key_id)
        and (epid.platform_id, epid.build, epid.lcid) == (host.platform_id, host.build, lcid)
        and epid.activation_date >= max(csvlk.release_date, host.release_date)
    )


def read_identity_file(path: Path) -> dict[str, Any] | None:
    """The saved identity, or None when there is none; IdentityError when it is unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IdentityError(f"identity file {path} is unreadable: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != IDENTITY_FORMAT:
        raise IdentityError(f"identity file {path} is not a {IDENTITY_FORMAT} file")
    return doc


def write_identity_file(path: Path, doc: Mapping[str, Any]) -> None:
    """Replace the identity file atomically (a node reading it never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def build_identity(
    catalog: Catalog,
    *,
    epid: Iterable[str],
    hwid: str,
    lcid: int,
    host_build: int | None,
    ndr64: bool,
    rng: random.Random,
    today: date,
    path: Path | None = None,
    save: bool = True,
) -> HostIdentity:
    """Turn the identity settings into this host's identity, reusing what `path` saved.

    Generated values (ePIDs, a random HWID) are saved to `path` so that a restart answers
    with the same identity; values that no longer fit the settings are generated anew.
    """
    host = choose_host_build(catalog, host_build, ndr64)
    try:
        mode, overrides = parse_epid_option(epid)
    except ValueError as exc:
        raise IdentityError(str(exc)) from exc
    saved: dict[str, Any] = {}
    if path is not None:
        try:
            saved = read_identity_file(path) or {}
        except IdentityError as exc:
            log.warning("%s; a new identity is generated", exc)
    saved_epids = saved.get("epids")
    if not isinstance(saved_epids, dict):
        saved_epids = {}
    keys = []
    for csvlk in held_csvlks(catalog, host.build):
        name = key_name(csvlk)
        configured = overrides.get(name) or overrides.get("*")
        if configured is not None:
            if not _fits(configured, csvlk, host, parse_epid(configured).lcid):
                log.warning(
                    "--epid %s=%s does not fit the %s host key (group %d) on build %d",
                    name, configured, csvlk.name, csvlk.group_id, host.build,
                )  # fmt: skip
            keys.append(HeldKey(name, csvlk, configured, "configured"))
            continue
        previous = saved_epids.get(str(csvlk.id))
        if isinstance(previous, str) and _fits(previous, csvlk, host, lcid):
            keys.append(HeldKey(name, csvlk, previous, "saved"))
        else:
            fresh = str(random_epid(csvlk, host, lcid, rng, today))
            keys.append(HeldKey(name, csvlk, fresh, "generated"))
    if hwid == "random":
        stored = saved.get("hwid")
        try:
            hwid_bytes = parse_hwid(stored) if isinstance(stored, str) else random_hwid(rng)
        except ValueError:
            hwid_bytes = random_hwid(rng)
    else:
        hwid_bytes = parse_hwid(hwid)
    identity = HostIdentity(
        catalog=catalog,
        host_build=host,
        lcid=lcid,
        hwid=hwid_bytes,
        keys=tuple(keys),
        per_request=mode == "per-request",
        rng=rng,
        today=today,
    )
    if path is not None and save:
        doc: dict[str, Any] = {
            "format": IDENTITY_FORMAT,
            "host_build": host.build,
            "lcid": lcid,
            "epids": {str(h.csvlk.id): h.epid for h in keys if h.source != "configured"},
        }
        # A configured HWID is a setting, not state: the generated one stays saved.
        stored_hwid = hwid_bytes.hex().upper() if hwid == "random" else saved.get("hwid")
        if isinstance(stored_hwid, str):
            doc["hwid"] = stored_hwid
        if doc != saved:
            try:
                write_identity_file(path, doc)
            except OSError as exc:
                log.warning("identity not saved to %s (it will change on restart): %s", path, exc)
    return identity
