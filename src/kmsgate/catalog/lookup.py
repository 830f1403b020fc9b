"""The Catalog: O(1) lookups over the shipped product data, plus search and name resolution."""

from __future__ import annotations

import copy
import datetime
import fnmatch
import functools
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kmsgate.catalog.families import UNKNOWN_FAMILY, add_families
from kmsgate.catalog.model import (
    Application,
    Csvlk,
    GenuineHost,
    HostBuild,
    KmsId,
    Sku,
    SkuRelease,
    VlmcsdCsvlk,
)

SCHEMA = "kmsgate-catalog/2"
DATA_FILE = "products.json"
WINDOWS_APPLICATION_ID = uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f")
_GLOB_CHARS = frozenset("*?[")
_LISTED_CANDIDATES = 10
# Words admins type for the words SKU names use; both sides are folded onto one token.
_SYNONYMS = {
    "professional": "pro",
    "proplus": "pro plus",
    "dc": "datacenter",
    "std": "standard",
    "ent": "enterprise",
    "win": "windows",
    "edu": "education",
    "srv": "server",
}
_TOKEN = re.compile(r"[0-9]+(?:\.[0-9]+)?|[a-z]+")
_PRE_RELEASE = re.compile(r"preview|pre-release|beta|\[rc\]|insider", re.IGNORECASE)


def name_tokens(text: str) -> frozenset[str]:
    """Words of a product name, folded ("10/11" is "10" and "11"; "Professional" is "pro")."""
    words = " ".join(_SYNONYMS.get(w, w) for w in _TOKEN.findall(text.casefold()))
    return frozenset(words.split())


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

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Catalog:
        """Build a catalogue from a parsed products.json document; ValueError if malformed."""
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"catalogue schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
        try:
            return cls._from_dict(doc)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed catalogue data: {exc!r}") from exc

    @classmethod
    def _from_dict(cls, doc: Mapping[str, Any]) -> Catalog:
        if not all("family" in r for r in (*doc["kms_ids"], *doc["skus"])):
            # A file `kmsgate products import` wrote before families were stored.
            doc = copy.deepcopy(dict(doc))
            add_families(doc)
        parsed: dict[str, uuid.UUID] = {}

        def guid(text: str) -> uuid.UUID:
            # Application and KMS ids repeat hundreds of times; parse each string once.
            value = parsed.get(text)
            if value is None:
                value = parsed[text] = uuid.UUID(text)
            return value

        def maybe_guid(text: str | None) -> uuid.UUID | None:
            return None if text is None else guid(text)

        date = datetime.date.fromisoformat
        applications = [
            Application(
                id=guid(a["id"]),
                name=a["name"],
                min_active_clients=a["min_active_clients"],
                vlmcsd_csvlk_index=a["vlmcsd_csvlk_index"],
            )
            for a in doc["applications"]
        ]
        kms_ids = [
            KmsId(
                id=guid(k["id"]),
                name=k["name"],
                application_id=guid(k["application_id"]),
                default_protocol=k["default_protocol"],
                n_count_policy=k["n_count_policy"],
                is_retail=k["is_retail"],
                is_preview=k["is_preview"],
                is_placeholder=k["is_placeholder"],
                vlmcsd_csvlk_index=k["vlmcsd_csvlk_index"],
                superseded_by=maybe_guid(k.get("superseded_by")),
                in_microsoft_list=k.get("in_microsoft_list"),
                family=k["family"],
            )
            for k in doc["kms_ids"]
        ]
        kms_by_id = {k.id: k for k in kms_ids}
        skus = []
        for s in doc["skus"]:
            # The file stores application, protocol and N-count once, on the KMS id.
            kms = kms_by_id[guid(s["kms_id"])]
            skus.append(
                Sku(
                    id=guid(s["id"]),
                    name=s["name"],
                    kms_id=kms.id,
                    application_id=kms.application_id,
                    gvlk=s["gvlk"],
                    default_protocol=kms.default_protocol,
                    n_count_policy=kms.n_count_policy,
                    gvlk_is_generated=s["gvlk_is_generated"],
                    kms_id_by_release=tuple(
                        SkuRelease(r["release"], r["build"], guid(r["kms_id"]), r["verified"])
                        for r in s.get("kms_id_by_release", ())
                    ),
                    family=s["family"],
                )
            )
        csvlks = [
            Csvlk(
                id=maybe_guid(c["id"]),
                name=c["name"],
                group_id=c["group_id"],
                key_id_blocks=tuple((start, end) for start, end in c["key_id_blocks"]),
                release_date=date(c["release_date"]),
                is_lab=c["is_lab"],
                is_preview=c["is_preview"],
                activates_kms_ids=frozenset(guid(k) for k in c["activates_kms_ids"]),
                host_key_family=c["host_key_family"],
                is_azure_only=c["is_azure_only"],
            )
            for c in doc["csvlks"]
        ]
        builds = [
            HostBuild(
                build=b["build"],
                platform_id=b["platform_id"],
                name=b["name"],
                release_date=date(b["release_date"]),
                uses_ndr64=b["uses_ndr64"],
                use_for_epid=b["use_for_epid"],
                may_be_server=b["may_be_server"],
            )
            for b in doc["host_builds"]
        ]
        vlmcsd = [
            VlmcsdCsvlk(
                index=v["index"],
                ini_name=v["ini_name"],
                name=v["name"],
                group_id=v["group_id"],
                min_key_id=v["min_key_id"],
                max_key_id=v["max_key_id"],
                release_date=date(v["release_date"]),
                min_active_clients=v["min_active_clients"],
                default_epid=v["default_epid"],
                used_for_kms_ids=frozenset(
                    k.id for k in kms_ids if k.vlmcsd_csvlk_index == v["index"]
                ),
            )
            for v in doc["vlmcsd_csvlks"]
        ]
        hosts = [
            GenuineHost(
                build=h["build"],
                host_role=h["host_role"],
                windows_csvlk_id=maybe_guid(h["windows_csvlk_id"]),
                office_csvlk_ids=tuple(guid(c) for c in h["office_csvlk_ids"]),
                verified=h["verified"],
            )
            for h in doc["genuine_host_model"]["by_build"]
        ]
        return cls(
            applications=applications,
            kms_ids=kms_ids,
            skus=skus,
            csvlks=csvlks,
            host_builds=builds,
            vlmcsd_csvlks=vlmcsd,
            genuine_hosts=hosts,
            provenance=doc.get("provenance"),
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> Catalog:
        """Build a catalogue from products.json text."""
        doc = json.loads(data)
        if not isinstance(doc, Mapping):
            raise ValueError("catalogue data is not a JSON object")
        return cls.from_dict(doc)

    @classmethod
    def from_file(cls, path: Path) -> Catalog:
        """Load a catalogue file (`--catalog`); ValueError naming the file if it is not one."""
        try:
            return cls.from_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"catalogue {path}: {exc}") from exc

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
        if _GLOB_CHARS & set(text):
            matches = [s for s in self._skus if fnmatch.fnmatchcase(s.name.casefold(), folded)]
            if len(matches) == 1:
                return matches[0]
        else:
            matches = self._best_word_matches(folded)
            if len(matches) == 1:
                return matches[0]
        if matches:
            raise LookupError(
                f"product {spec!r} is ambiguous: {len(matches)} SKUs match; give the exact "
                f"name or SKU id:{_listing(matches)}"
            )
        import difflib  # only on this error path; keeps importing the catalogue light

        names = {s.name.casefold(): s for s in self._skus}
        close = [names[n] for n in difflib.get_close_matches(folded, names, n=5, cutoff=0.6)]
        hint = f" Did you mean:{_listing(close)}" if close else " See `kmsgate products --search`."
        raise LookupError(f"unknown product {spec!r}.{hint}")

    def _best_word_matches(self, folded: str) -> list[Sku]:
        """SKUs containing the text or all its words, narrowed to the fewest extra words."""
        if self._sku_tokens is None:
            self._sku_tokens = tuple(name_tokens(s.name) for s in self._skus)
        wanted = name_tokens(folded)
        found: list[tuple[tuple[int, bool], Sku]] = []
        for sku, tokens in zip(self._skus, self._sku_tokens, strict=True):
            if folded in sku.name.casefold() or (wanted and wanted <= tokens):
                # A pre-release SKU only wins when asked for by name.
                pre = bool(_PRE_RELEASE.search(sku.name)) and not _PRE_RELEASE.search(folded)
                found.append(((len(tokens - wanted), pre), sku))
        if not found:
            return []
        best = min(rank for rank, _ in found)
        if sum(1 for rank, _ in found if rank == best) == 1:
            return [sku for rank, sku in found if rank == best]
        return [sku for _, sku in sorted(found, key=lambda item: item[0])]

    def _resolve_guid(self, guid: uuid.UUID) -> Sku:
        sku = self._skus_by_id.get(guid)
        if sku is not None:
            return sku
        kms = self._kms_by_id.get(guid)
        if kms is not None:
            # A KMS id is the commonest mix-up; point at the SKUs it covers.
            raise LookupError(
                f"{guid} is the KMS id of {kms.name!r}, not a SKU id; its SKUs:"
                f"{_listing(self.skus_for_kms_id(self.genuine_kms_id(guid)))}"
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


def _listing(skus: Iterable[Sku]) -> str:
    """Indented list of SKUs for error messages, capped so a broad match stays readable."""
    items = list(skus)
    lines = [f"\n  {s.name} ({s.id})" for s in items[:_LISTED_CANDIDATES]]
    if len(items) > _LISTED_CANDIDATES:
        lines.append(f"\n  ... and {len(items) - _LISTED_CANDIDATES} more")
    return "".join(lines)


@functools.cache
def default_catalog() -> Catalog:
    """The catalogue shipped with kmsgate, loaded once from the package data."""
    import importlib.resources  # pulls in tempfile, inspect, ...; only needed once

    data = importlib.resources.files("kmsgate.catalog").joinpath(DATA_FILE).read_bytes()
    return Catalog.from_json(data)


def load_catalog(path: Path | None) -> Catalog:
    """The catalogue in `path` (`--catalog`), else the built-in one; ValueError naming the file."""
    return default_catalog() if path is None else Catalog.from_file(path)
