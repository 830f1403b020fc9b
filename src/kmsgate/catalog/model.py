"""Immutable records of the product catalogue (applications, KMS ids, SKUs, CSVLKs, host builds)."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass


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
    # Made-up ids of the legacy data set (01000000-0000-...); no real client sends them.
    is_placeholder: bool = False
    vlmcsd_csvlk_index: int | None = None


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


@dataclass(frozen=True, slots=True)
class Csvlk:
    """A KMS host key (CSVLK): the ePID group and key-id range, and what it may activate."""

    id: uuid.UUID | None
    name: str
    group_id: int
    min_key_id: int
    max_key_id: int
    release_date: datetime.date
    is_lab: bool
    is_preview: bool
    activates_kms_ids: frozenset[uuid.UUID]


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
