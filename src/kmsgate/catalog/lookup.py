"""The Catalog: O(1) lookups over the product records, plus search and name resolution."""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from kmsgate.catalog.families import UNKNOWN_FAMILY
from kmsgate.catalog.model import (
    Application,
    Csvlk,
    GenuineHost,
    HostBuild,
    KmsId,
    Sku,
    VlmcsdCsvlk,
)
from kmsgate.catalog.names import GLOB_CHARS, best_word_matches, did_you_mean, listing, name_tokens

WINDOWS_APPLICATION_ID = uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f")


def _index(items: Iterable[Any], key: str, what: str) -> dict[Any, Any]:
    """Map items by an attribute, refusing duplicates."""
    out: dict[Any, Any] = {}
    for item in items:
        value = getattr(item, key)
        if value in out:
            raise ValueError(f"duplicate {what} {value}")
        out[value] = item
    return out


class Catalog:
    """Immutable product catalogue with O(1) lookups by application, KMS id, SKU id and build."""

    __slots__ = (
        "_applications",
        "_apps_by_id",
        "_builds",
        "_builds_by_number",
        "_csvlks",
        "_csvlks_by_id",
        "_genuine_hosts",
        "_kms_by_id",
        "_kms_ids",
        "_provenance",
        "_search_text",
        "_sku_tokens",
        "_skus",
        "_skus_by_gvlk",
        "_skus_by_id",
        "_skus_by_kms",
        "_skus_by_name",
        "_vlmcsd_by_index",
        "_vlmcsd_csvlks",
    )

    def __init__(
        self,
        *,
        applications: Iterable[Application],
        kms_ids: Iterable[KmsId],
        skus: Iterable[Sku],
        csvlks: Iterable[Csvlk],
        host_builds: Iterable[HostBuild],
        vlmcsd_csvlks: Iterable[VlmcsdCsvlk] = (),
        genuine_hosts: Iterable[GenuineHost] = (),
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        """Build the indexes; raise ValueError on duplicate ids or dangling references."""
        self._applications = tuple(applications)
        self._kms_ids = tuple(kms_ids)
        self._skus = tuple(skus)
        self._csvlks = tuple(csvlks)
        self._builds = tuple(sorted(host_builds, key=lambda b: b.build))
        self._vlmcsd_csvlks = tuple(sorted(vlmcsd_csvlks, key=lambda v: v.index))
        self._provenance: Mapping[str, Any] = MappingProxyType(dict(provenance or {}))

        self._apps_by_id: dict[uuid.UUID, Application] = _index(
            self._applications, "id", "application"
        )
        self._kms_by_id: dict[uuid.UUID, KmsId] = _index(self._kms_ids, "id", "KMS id")
        self._skus_by_id: dict[uuid.UUID, Sku] = _index(self._skus, "id", "SKU id")
        self._builds_by_number: dict[int, HostBuild] = _index(self._builds, "build", "host build")
        self._vlmcsd_by_index: dict[int, VlmcsdCsvlk] = _index(
            self._vlmcsd_csvlks, "index", "vlmcsd CSVLK index"
        )
        self._genuine_hosts: dict[int, GenuineHost] = _index(genuine_hosts, "build", "host build")
        for kms in self._kms_ids:
            if kms.application_id not in self._apps_by_id:
                raise ValueError(f"KMS id {kms.id} ({kms.name}): unknown application")
            target = self._kms_by_id.get(kms.superseded_by) if kms.superseded_by else None
            if kms.superseded_by is not None and (target is None or target.superseded_by):
                raise ValueError(f"KMS id {kms.id} ({kms.name}): bad superseded_by")
        self._skus_by_name: dict[str, Sku] = {}
        self._skus_by_gvlk: dict[str, Sku] = {}
        skus_by_kms: dict[uuid.UUID, list[Sku]] = {}
        for sku in self._skus:
            for kms_id in sorted(sku.kms_ids):
                if kms_id not in self._kms_by_id:
                    raise ValueError(f"SKU {sku.id} ({sku.name}): unknown KMS id {kms_id}")
                skus_by_kms.setdefault(kms_id, []).append(sku)
            if self._skus_by_name.setdefault(sku.name.casefold(), sku) is not sku:
                raise ValueError(f"duplicate SKU name {sku.name!r}")
            if sku.gvlk and self._skus_by_gvlk.setdefault(sku.gvlk.casefold(), sku) is not sku:
                raise ValueError(f"duplicate GVLK {sku.gvlk}")
        self._skus_by_kms = {k: tuple(v) for k, v in skus_by_kms.items()}
        # Built on first use: most processes (a host answering requests) never search.
        self._search_text: tuple[str, ...] | None = None
        self._sku_tokens: tuple[frozenset[str], ...] | None = None
        self._csvlks_by_id: dict[uuid.UUID, Csvlk] = {}
        for csvlk in self._csvlks:
            unknown = csvlk.activates_kms_ids - self._kms_by_id.keys()
            if unknown:
                raise ValueError(f"CSVLK {csvlk.name}: unknown KMS ids {sorted(map(str, unknown))}")
            # Two records may share an id (a lab key's duplicate row); the first one wins.
            if csvlk.id is not None:
                self._csvlks_by_id.setdefault(csvlk.id, csvlk)
        for host in self._genuine_hosts.values():
            for held in (host.windows_csvlk_id, *host.office_csvlk_ids):
                if held is not None and held not in self._csvlks_by_id:
                    raise ValueError(f"genuine host {host.build}: unknown CSVLK {held}")

    def __repr__(self) -> str:
        return (
            f"<Catalog {len(self._applications)} applications, {len(self._kms_ids)} KMS ids, "
            f"{len(self._skus)} SKUs, {len(self._csvlks)} CSVLKs>"
        )

    @property
    def applications(self) -> tuple[Application, ...]:
        """All applications, sorted by name."""
        return self._applications

    @property
    def kms_ids(self) -> tuple[KmsId, ...]:
        """All KMS counted ids, sorted by name."""
        return self._kms_ids

    @property
    def skus(self) -> tuple[Sku, ...]:
        """All SKUs with a known activation id, sorted by name."""
        return self._skus

    @property
    def csvlks(self) -> tuple[Csvlk, ...]:
        """CSVLKs usable in an ePID, oldest first."""
        return self._csvlks

    @property
    def host_builds(self) -> tuple[HostBuild, ...]:
        """Windows builds a KMS host may run, by build number."""
        return self._builds

    @property
    def vlmcsd_csvlks(self) -> tuple[VlmcsdCsvlk, ...]:
        """vlmcsd's built-in CSVLK table, by index."""
        return self._vlmcsd_csvlks

    @property
    def provenance(self) -> Mapping[str, Any]:
        """Where the data came from and what the build dropped or fixed (read-only)."""
        return self._provenance

    def application(self, app_id: uuid.UUID) -> Application | None:
        """The application with this id, or None."""
        return self._apps_by_id.get(app_id)

    def kms_id(self, kms_id: uuid.UUID) -> KmsId | None:
        """The KMS counted id record (placeholders included), or None."""
        return self._kms_by_id.get(kms_id)

    def genuine_kms_id(self, kms_id: uuid.UUID) -> uuid.UUID:
        """The id a request's KMS id stands for: a superseded placeholder's genuine id."""
        kms = self._kms_by_id.get(kms_id)
        if kms is not None and kms.superseded_by is not None:
            return kms.superseded_by
        return kms_id

    def sku(self, sku_id: uuid.UUID) -> Sku | None:
        """The SKU with this activation id, or None."""
        return self._skus_by_id.get(sku_id)

    def skus_for_kms_id(self, kms_id: uuid.UUID) -> tuple[Sku, ...]:
        """SKUs counted under this KMS id on some release (empty if none or unknown)."""
        return self._skus_by_kms.get(kms_id, ())

    def csvlk(self, csvlk_id: uuid.UUID) -> Csvlk | None:
        """The CSVLK record with this id, or None."""
        return self._csvlks_by_id.get(csvlk_id)

    def host_build(self, build: int) -> HostBuild | None:
        """The host build record with exactly this build number, or None."""
        return self._builds_by_number.get(build)

    def genuine_host(self, build: int) -> GenuineHost | None:
        """Which CSVLKs a genuine KMS host of this build holds, or None for an unknown build."""
        return self._genuine_hosts.get(build)

    def search(self, text: str) -> list[Sku]:
        """SKUs whose name, GVLK, SKU id or KMS id contains text (case-insensitive)."""
        if self._search_text is None:
            # One folded string per SKU keeps search a single pass of `in` tests.
            self._search_text = tuple(
                "\n".join((s.name, s.gvlk or "", str(s.id), *map(str, s.kms_ids))).casefold()
                for s in self._skus
            )
        needle = text.strip().casefold()
        return [
            sku for sku, hay in zip(self._skus, self._search_text, strict=True) if needle in hay
        ]

    def resolve_product(self, spec: str) -> Sku:
        """Resolve a SKU id, exact name or GVLK, a glob, or the words an admin would type.

        "Windows 11 Pro", "Server 2025 Datacenter" and "Office LTSC 2024 Pro Plus" resolve to
        the SKU whose name holds every word with the fewest others. Raises LookupError naming
        the candidates when the spec is unknown or ambiguous.
        """
        text = spec.strip()
        if not text:
            raise LookupError("empty product name; give a SKU name, id or GVLK")
        try:
            guid: uuid.UUID | None = uuid.UUID(text)
        except ValueError:
            guid = None
        if guid is not None:
            return self._resolve_guid(guid)
        folded = text.casefold()
        exact = self._skus_by_name.get(folded) or self._skus_by_gvlk.get(folded)
        if exact is not None:
            return exact
        if GLOB_CHARS & set(text):
            matches = [s for s in self._skus if fnmatch.fnmatchcase(s.name.casefold(), folded)]
            if len(matches) == 1:
                return matches[0]
        else:
            if self._sku_tokens is None:
                self._sku_tokens = tuple(name_tokens(s.name) for s in self._skus)
            matches = best_word_matches(folded, self._skus, self._sku_tokens)
            if len(matches) == 1:
                return matches[0]
        if matches:
            raise LookupError(
                f"product {spec!r} is ambiguous: {len(matches)} SKUs match; give the exact "
                f"name or SKU id:{listing(matches)}"
            )
        raise LookupError(f"unknown product {spec!r}.{did_you_mean(folded, self._skus)}")

    def _resolve_guid(self, guid: uuid.UUID) -> Sku:
        sku = self._skus_by_id.get(guid)
        if sku is not None:
            return sku
        kms = self._kms_by_id.get(guid)
        if kms is not None:
            # A KMS id is the commonest mix-up; point at the SKUs it covers.
            raise LookupError(
                f"{guid} is the KMS id of {kms.name!r}, not a SKU id; its SKUs:"
                f"{listing(self.skus_for_kms_id(self.genuine_kms_id(guid)))}"
            )
        raise LookupError(f"unknown SKU id {guid}")

    def vlmcsd_csvlk_for_kms_id(self, kms_id: uuid.UUID) -> VlmcsdCsvlk:
        """The vlmcsd CSVLK record vlmcsd uses for this KMS id; record 0 for ids it lacks."""
        kms = self._kms_by_id.get(kms_id)
        index = kms.vlmcsd_csvlk_index if kms is not None else None
        record = self._vlmcsd_by_index.get(0 if index is None else index)
        if record is None:
            raise LookupError("catalogue has no vlmcsd CSVLK table")
        return record

    def family(self, sku_id: uuid.UUID, kms_id: uuid.UUID) -> str:
        """Product family of a request: its SKU's, else its KMS id's, else "unknown"."""
        if (sku := self._skus_by_id.get(sku_id)) is not None:
            return sku.family
        if (kms := self._kms_by_id.get(kms_id)) is not None:
            return kms.family
        return UNKNOWN_FAMILY

    def product_name(self, sku_id: uuid.UUID | None, kms_id: uuid.UUID | None) -> str:
        """Name for log lines: the SKU's, else the KMS id's, else 'unknown (<guid>)'."""
        if sku_id is not None and (sku := self._skus_by_id.get(sku_id)) is not None:
            return sku.name
        if kms_id is not None and (kms := self._kms_by_id.get(kms_id)) is not None:
            return kms.name
        guid = sku_id if sku_id is not None else kms_id
        return "unknown" if guid is None else f"unknown ({guid})"
