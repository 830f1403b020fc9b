"""Immutable records of the product catalogue: applications, KMS ids, SKUs, CSVLKs, host builds,
and the genuine-host model (which host keys a genuine KMS host of each build holds)."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

from kmsgate.catalog.families import UNKNOWN_FAMILY


@dataclass(frozen=True, slots=True)
class Application:
    """A KMS application (client counter): Windows, Office 2010, Office 2013+."""

    id: uuid.UUID
    name: str
    min_active_clients: int
    # vlmcsd keeps one ePID per CSVLK record; this is the record its application falls under.
    vlmcsd_csvlk_index: int = 0


@dataclass(frozen=True, slots=True)
class KmsId:
    """A KMS counted id: the product group a KMS host licenses and counts clients for."""

    id: uuid.UUID
    name: str
    application_id: uuid.UUID
    default_protocol: int
    n_count_policy: int
    is_retail: bool
    is_preview: bool
    # Made-up ids of the legacy data sets (01000000-..., py-kms's UUIDv5 ids); some real
    # clients built from py-kms data send them all the same.
    is_placeholder: bool = False
    vlmcsd_csvlk_index: int | None = None
    # The genuine id a placeholder stands for: a request carrying it is treated as that id.
    superseded_by: uuid.UUID | None = None
    # Found in a Microsoft licence's KmsCountedIdList (None: not checked against one).
    in_microsoft_list: bool | None = None
    # Metric label and stored product group: "windows", "windows-server", "office-2019", ...
    family: str = UNKNOWN_FAMILY


@dataclass(frozen=True, slots=True)
class SkuRelease:
    """A KMS id one SKU sends on one OS release (LTSC editions change it between releases)."""

    release: str
    build: int
    kms_id: uuid.UUID
    verified: bool


@dataclass(frozen=True, slots=True)
class Sku:
    """A SKU (activation id): one edition with its public GVLK, if known."""

    id: uuid.UUID
    name: str
    kms_id: uuid.UUID
    application_id: uuid.UUID
    gvlk: str | None
    default_protocol: int
    n_count_policy: int
    # True when the data-set authors generated the key instead of Microsoft publishing it.
    gvlk_is_generated: bool = False
    kms_id_by_release: tuple[SkuRelease, ...] = ()
    # As KmsId.family; a preview SKU may name itself a server under a client KMS id.
    family: str = UNKNOWN_FAMILY

    @property
    def kms_ids(self) -> frozenset[uuid.UUID]:
        """Every KMS id this SKU is counted under, on any release."""
        return frozenset({self.kms_id, *(r.kms_id for r in self.kms_id_by_release)})


@dataclass(frozen=True, slots=True)
class Csvlk:
    """A KMS host key (CSVLK): the ePID group, its valid key-id blocks, and what it activates."""

    id: uuid.UUID | None
    name: str
    group_id: int
    # Inclusive, sorted, non-overlapping; Server 2022's has a hole, so one range is not enough.
    key_id_blocks: tuple[tuple[int, int], ...]
    release_date: datetime.date
    is_lab: bool
    is_preview: bool
    activates_kms_ids: frozenset[uuid.UUID]
    # The host key's product generation, e.g. "windows-server-2025", "office-2024".
    host_key_family: str = ""
    is_azure_only: bool = False

    def __post_init__(self) -> None:
        if not self.key_id_blocks or any(end < start for start, end in self.key_id_blocks):
            raise ValueError(f"CSVLK {self.name}: key-id blocks {self.key_id_blocks} are invalid")

    def has_key_id(self, key_id: int) -> bool:
        """Whether a key id lies inside one of the valid blocks."""
        return any(start <= key_id <= end for start, end in self.key_id_blocks)

    @property
    def is_office(self) -> bool:
        return self.host_key_family.startswith("office-")


@dataclass(frozen=True, slots=True)
class HostBuild:
    """A Windows build usable as the KMS host OS in an ePID."""

    build: int
    platform_id: int
    name: str
    release_date: datetime.date
    uses_ndr64: bool
    use_for_epid: bool
    may_be_server: bool


@dataclass(frozen=True, slots=True)
class VlmcsdCsvlk:
    """One of vlmcsd's six built-in CSVLK records, with the ePID its `-r0` mode sends."""

    index: int
    ini_name: str
    name: str
    group_id: int
    min_key_id: int
    max_key_id: int
    release_date: datetime.date
    min_active_clients: int
    default_epid: str
    used_for_kms_ids: frozenset[uuid.UUID]


@dataclass(frozen=True, slots=True)
class GenuineHost:
    """The host keys a genuine KMS host of one build holds: one Windows CSVLK, Office CSVLKs."""

    build: int
    host_role: str  # "server", "client" or "none" (not a KMS host OS)
    windows_csvlk_id: uuid.UUID | None
    office_csvlk_ids: tuple[uuid.UUID, ...]
    verified: bool
