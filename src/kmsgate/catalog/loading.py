"""Where a Catalog comes from: products.json parsed and checked, the shipped file, `--catalog`."""

from __future__ import annotations

import copy
import datetime
import functools
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmsgate.catalog.families import add_families
from kmsgate.catalog.lookup import Catalog
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


def catalog_from_dict(doc: Mapping[str, Any]) -> Catalog:
    """Build a catalogue from a parsed products.json document; ValueError if malformed."""
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"catalogue schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    try:
        return _build(doc)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed catalogue data: {exc!r}") from exc


def _build(doc: Mapping[str, Any]) -> Catalog:
    """The Catalog a document describes; KeyError, TypeError or AttributeError if malformed."""
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
            used_for_kms_ids=frozenset(k.id for k in kms_ids if k.vlmcsd_csvlk_index == v["index"]),
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
    return Catalog(
        applications=applications,
        kms_ids=kms_ids,
        skus=skus,
        csvlks=csvlks,
        host_builds=builds,
        vlmcsd_csvlks=vlmcsd,
        genuine_hosts=hosts,
        provenance=doc.get("provenance"),
    )


def catalog_from_json(data: str | bytes) -> Catalog:
    """Build a catalogue from products.json text."""
    doc = json.loads(data)
    if not isinstance(doc, Mapping):
        raise ValueError("catalogue data is not a JSON object")
    return catalog_from_dict(doc)


def catalog_from_file(path: Path) -> Catalog:
    """Load a catalogue file (`--catalog`); ValueError naming the file if it is not one."""
    try:
        return catalog_from_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"catalogue {path}: {exc}") from exc


def shipped_data() -> bytes:
    """The bytes of the products.json shipped inside the package."""
    import importlib.resources  # pulls in tempfile, inspect, ...; only needed once

    return importlib.resources.files("kmsgate.catalog").joinpath(DATA_FILE).read_bytes()


@functools.cache
def default_catalog() -> Catalog:
    """The catalogue shipped with kmsgate, loaded once from the package data."""
    return catalog_from_json(shipped_data())


def load_catalog(path: Path | None) -> Catalog:
    """The catalogue in `path` (`--catalog`), else the built-in one; ValueError naming the file."""
    return default_catalog() if path is None else catalog_from_file(path)
