#!/usr/bin/env python3
"""Build kmsgate's own product catalogue (src/kmsgate/catalog/products.json) from kms-products.json.

Usage: tools/build_catalog.py [SOURCE] [--output PATH] [--check]
SOURCE defaults to the vendored facts, data/kms-products.json (schema kms-products/2).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# The family rule is kmsgate's own (imports add families by it too); take it from this tree.
sys.path.insert(0, str(REPO_ROOT / "src"))
from kmsgate.catalog.families import add_families  # noqa: E402

DEFAULT_SOURCE = REPO_ROOT / "data" / "kms-products.json"
DEFAULT_OUTPUT = REPO_ROOT / "src" / "kmsgate" / "catalog" / "products.json"

SCHEMA = "kmsgate-catalog/2"
SOURCE_SCHEMA = "kms-products/2"

GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Product keys use a 24-symbol alphabet plus the positional "N" of Windows 8+ keys.
GVLK_RE = re.compile(r"^[BCDFGHJKMNPQRTVWXY2346789]{5}(?:-[BCDFGHJKMNPQRTVWXY2346789]{5}){4}$")
EPID_RE = re.compile(
    r"^(?P<platform>\d{5})-(?P<group>\d{5})-(?P<key_hi>\d{3})-(?P<key_lo>\d{6})-03-"
    r"(?P<lcid>\d{1,5})-(?P<build>\d{4,5})\.0000-(?P<day>\d{3})(?P<year>\d{4})$"
)
PROTOCOLS = {"4.0": 4, "5.0": 5, "6.0": 6}
NIL_GUID = "00000000-0000-0000-0000-000000000000"

# CSVLKs with an ePID group and key range but no release date; an ePID needs a lower date bound.
# Every entry must be used by the build, so the table cannot outlive the gap it fills.
CSVLK_DATE_FILLS: dict[tuple[str, str], tuple[str, str]] = {
    ("7b37c913-252b-46be-ad80-b2b5ceade8af", "Windows Server 2012"): (
        "2012-10-26",
        "release date of host build 9200 (Windows 8 / Server 2012) in the same file",
    ),
    ("fe27276b-a5a9-4b4d-88e3-14271beb79be", "Windows Server 2012 (Microsoft internal Lab)"): (
        "2012-10-26",
        "date of the other record with the same CSVLK id in the same file",
    ),
    ("acf1b4fd-1c55-4f2d-a60b-415ac958ad88", "Windows Server 2012 R2 (Microsoft Internal Lab)"): (
        "2013-10-17",
        "date of the Windows Server 2012 R2 CSVLK in the same file",
    ),
}
HOST_ROLES = ("server", "client", "none")


class BuildError(Exception):
    """The source failed validation; the message lists every problem found."""


class _Problems:
    """Collects validation problems so one run reports all of them, not just the first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def guid(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not GUID_RE.match(value):
            self.add(where, f"not a canonical lowercase GUID: {value!r}")
            return str(value)
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            self.add(where, f"not a trimmed non-empty string: {value!r}")
        return str(value)

    def integer(self, value: Any, where: str, minimum: int = 0) -> int:
        # bool is an int subclass; a flag where a number belongs is a source bug.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.add(where, f"not an integer >= {minimum}: {value!r}")
            return minimum
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.add(where, f"not a boolean: {value!r}")
            return False
        return value

    def date(self, value: Any, where: str) -> str:
        try:
            datetime.date.fromisoformat(value)
        except (TypeError, ValueError):
            self.add(where, f"not a YYYY-MM-DD date: {value!r}")
        return str(value)

    def unique(self, values: Iterable[str], what: str) -> None:
        seen: set[str] = set()
        for value in values:
            if value in seen:
                self.add(what, f"duplicate {value!r}")
            seen.add(value)


def _records(doc: Mapping[str, Any], key: str, problems: _Problems) -> list[Mapping[str, Any]]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        problems.add(key, "missing or not a list of objects")
        return []
    return value


def _applications(doc: Mapping[str, Any], p: _Problems) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(_records(doc, "applications", p)):
        where = f"applications[{i}]"
        out.append(
            {
                "id": p.guid(rec.get("id"), where + ".id"),
                "name": p.text(rec.get("name"), where + ".name"),
                "min_active_clients": p.integer(rec.get("min_active_clients"), where, 1),
                "vlmcsd_csvlk_index": p.integer(rec.get("vlmcsd_csvlk_index"), where),
            }
        )
    p.unique((a["id"] for a in out), "applications id")
    return sorted(out, key=lambda a: (a["name"].casefold(), a["id"]))


def _kms_ids(doc: Mapping[str, Any], app_ids: set[str], p: _Problems) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(_records(doc, "kms_ids", p)):
        where = f"kms_ids[{i}] ({rec.get('name')})"
        app_id = p.guid(rec.get("application_id"), where + ".application_id")
        if app_id not in app_ids:
            p.add(where, f"application_id {app_id} is not an application")
        protocol = PROTOCOLS.get(str(rec.get("default_protocol")))
        if protocol is None:
            p.add(where, f"default_protocol not one of {sorted(PROTOCOLS)}")
        index = rec.get("vlmcsd_csvlk_index")
        superseded_by = rec.get("superseded_by")
        if superseded_by is not None:
            p.guid(superseded_by, where + ".superseded_by")
        listed = rec.get("in_microsoft_kms_counted_id_list")
        if listed is not None:
            p.flag(listed, where + ".in_microsoft_kms_counted_id_list")
        out.append(
            {
                "id": p.guid(rec.get("id"), where + ".id"),
                "name": p.text(rec.get("name"), where + ".name"),
                "application_id": app_id,
                "default_protocol": protocol or 0,
                "n_count_policy": p.integer(rec.get("n_count_policy"), where, 1),
                "is_retail": p.flag(rec.get("is_retail"), where + ".is_retail"),
                "is_preview": p.flag(rec.get("is_preview"), where + ".is_preview"),
                "is_placeholder": p.flag(rec.get("id_is_placeholder"), where),
                "vlmcsd_csvlk_index": None if index is None else p.integer(index, where),
                "superseded_by": superseded_by,
                "in_microsoft_list": listed,
            }
        )
    p.unique((k["id"] for k in out), "kms_ids id")
    by_id = {k["id"]: k for k in out}
    for kms in out:
        target = by_id.get(kms["superseded_by"]) if kms["superseded_by"] else None
        if kms["superseded_by"] is None:
            continue
        if target is None:
            p.add(kms["name"], f"superseded_by {kms['superseded_by']} is not a KMS id")
        elif target["superseded_by"] is not None or not kms["is_placeholder"]:
            # An alias must be a placeholder resolving in one step, or lookups could loop.
            p.add(kms["name"], "superseded_by must lead from a placeholder to a genuine id")
        elif target["application_id"] != kms["application_id"]:
            p.add(kms["name"], "superseded_by names a KMS id of another application")
    return sorted(out, key=lambda k: (k["name"].casefold(), k["id"]))


def _skus(
    doc: Mapping[str, Any], kms: Mapping[str, Mapping[str, Any]], p: _Problems
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(_records(doc, "skus", p)):
        where = f"skus[{i}] ({rec.get('name')})"
        sku_id = p.guid(rec.get("id"), where + ".id")
        if sku_id == NIL_GUID:
            p.add(where, "nil SKU id in skus[] (belongs in skus_without_id)")
        kms_id = p.guid(rec.get("kms_id"), where + ".kms_id")
        owner = kms.get(kms_id)
        if owner is None:
            p.add(where, f"kms_id {kms_id} is not a KMS id")
        else:
            # The catalogue stores these once, on the KMS id; the copies must agree.
            if rec.get("application_id") != owner["application_id"]:
                p.add(where, "application_id differs from its KMS id's")
            if PROTOCOLS.get(str(rec.get("default_protocol"))) != owner["default_protocol"]:
                p.add(where, "default_protocol differs from its KMS id's")
            if rec.get("n_count_policy") != owner["n_count_policy"]:
                p.add(where, "n_count_policy differs from its KMS id's")
        gvlk = rec.get("gvlk")
        if gvlk is not None and (not isinstance(gvlk, str) or not GVLK_RE.match(gvlk)):
            p.add(where, f"GVLK not in 5x5 product-key format: {gvlk!r}")
        releases = []
        for j, release in enumerate(rec.get("kms_id_by_release") or []):
            there = f"{where}.kms_id_by_release[{j}]"
            other = p.guid(release.get("kms_id"), there + ".kms_id")
            if other not in kms:
                p.add(there, f"kms_id {other} is not a KMS id")
            releases.append(
                {
                    "release": p.text(release.get("release"), there + ".release"),
                    "build": p.integer(release.get("build"), there + ".build", 1),
                    "kms_id": other,
                    "verified": release.get("status") == "sourced",
                }
            )
        record: dict[str, Any] = {
            "id": sku_id,
            "name": p.text(rec.get("name"), where + ".name"),
            "kms_id": kms_id,
            "gvlk": gvlk,
            "gvlk_is_generated": p.flag(rec.get("gvlk_is_generated"), where),
        }
        if releases:
            record["kms_id_by_release"] = sorted(releases, key=lambda r: r["build"])
        out.append(record)
    p.unique((s["id"] for s in out), "skus id")
    # Exact-name and exact-GVLK lookups need both to be unique.
    p.unique((s["name"].casefold() for s in out), "skus name (case-insensitive)")
    p.unique((s["gvlk"] for s in out if s["gvlk"]), "skus gvlk")
    return sorted(out, key=lambda s: (s["name"].casefold(), s["id"]))


def _skus_without_id(doc: Mapping[str, Any], p: _Problems) -> list[str]:
    names = []
    for i, rec in enumerate(_records(doc, "skus_without_id", p)):
        if rec.get("id") != NIL_GUID:
            p.add(f"skus_without_id[{i}]", "id is not the nil GUID")
        names.append(p.text(rec.get("name"), f"skus_without_id[{i}].name"))
    return sorted(names, key=str.casefold)


def _key_id_blocks(rec: Mapping[str, Any], key: str, where: str, p: _Problems) -> list[list[int]]:
    blocks = []
    for j, block in enumerate(rec.get(key) or []):
        start = p.integer(block.get("start"), f"{where}.{key}[{j}].start")
        end = p.integer(block.get("end"), f"{where}.{key}[{j}].end")
        if end < start or end > 999_999_999:
            p.add(where, f"bad {key} block {start}..{end}")
        blocks.append([start, end])
    blocks.sort()
    for (_, end), (start, _) in itertools.pairwise(blocks):
        if start <= end:
            p.add(where, f"{key} blocks overlap at {start}")
    return blocks


def _csvlks(
    doc: Mapping[str, Any], kms: Mapping[str, Mapping[str, Any]], p: _Problems, used: set[object]
) -> tuple[list[dict[str, Any]], list[str]]:
    out: list[dict[str, Any]] = []
    dropped = []
    for i, rec in enumerate(_records(doc, "csvlks", p)):
        name = p.text(rec.get("name"), f"csvlks[{i}].name")
        where = f"csvlks[{i}] ({name})"
        csvlk_id = rec.get("id")
        if csvlk_id is not None:
            p.guid(csvlk_id, where + ".id")
        if rec.get("group_id") is None or not rec.get("key_id_blocks"):
            # Without a group and key-id blocks the record cannot be put into an ePID.
            dropped.append(name)
            continue
        group = p.integer(rec.get("group_id"), where + ".group_id", 1)
        blocks = _key_id_blocks(rec, "key_id_blocks", where, p)
        reserved = _key_id_blocks(rec, "reserved_key_id_blocks", where, p)
        low, high = rec.get("min_key_id"), rec.get("max_key_id")
        if not isinstance(low, int) or not isinstance(high, int):
            p.add(where, f"min/max key id {low}..{high} not integers")
        elif not any(start <= low <= high <= end for start, end in blocks):
            p.add(where, f"min/max key id {low}..{high} lies in no key_id_blocks block")
        for start, end in reserved:
            if any(start <= b_end and b_start <= end for b_start, b_end in blocks):
                p.add(where, f"reserved block {start}..{end} overlaps a valid block")
        release = rec.get("release_date")
        if release is None:
            fill_key = (str(csvlk_id), name)
            fill = CSVLK_DATE_FILLS.get(fill_key)
            if fill is None:
                p.add(where, "no release_date and no entry in CSVLK_DATE_FILLS")
            else:
                release = fill[0]
                used.add(fill_key)
        activates = set()
        for kms_id in rec.get("activates_kms_ids") or []:
            kms_id = p.guid(kms_id, where + ".activates_kms_ids")
            if kms_id not in kms:
                p.add(where, f"activates unknown KMS id {kms_id}")
            activates.add(kms_id)
        for kms_id in rec.get("activates_superseded_kms_ids") or []:
            # A placeholder stays listed beside its genuine id so /1 readers resolve it.
            if kms_id not in activates or not (kms.get(kms_id) or {}).get("superseded_by"):
                p.add(where, f"activates_superseded_kms_ids names {kms_id} wrongly")
        if not activates:
            p.add(where, "activates no KMS id")
        family = rec.get("host_key_family")
        if not isinstance(family, str) or not re.fullmatch(r"(windows|office)-[a-z0-9.-]+", family):
            p.add(where, f"host_key_family malformed: {family!r}")
        out.append(
            {
                "id": csvlk_id,
                "name": name,
                "group_id": group,
                "key_id_blocks": blocks,
                "release_date": p.date(release, where + ".release_date"),
                "is_lab": p.flag(rec.get("is_lab"), where + ".is_lab"),
                "is_preview": p.flag(rec.get("is_preview"), where + ".is_preview"),
                "is_azure_only": p.flag(rec.get("is_azure_only"), where + ".is_azure_only"),
                "host_key_family": str(family),
                "activates_kms_ids": sorted(activates),
                "activates_basis": rec.get("activates_kms_ids_basis"),
            }
        )
    out.sort(key=lambda c: (c["release_date"], c["name"].casefold(), c["id"] or ""))
    return out, sorted(dropped, key=str.casefold)


def _genuine_host_model(
    doc: Mapping[str, Any],
    csvlks: list[dict[str, Any]],
    builds: set[int],
    p: _Problems,
) -> dict[str, Any]:
    model = doc.get("genuine_host_model")
    if not isinstance(model, Mapping):
        p.add("genuine_host_model", "missing or not an object")
        return {}
    # Only usable records can be held: a model naming a dropped CSVLK is a source bug.
    usable = {c["id"]: c for c in csvlks if c["id"] is not None}

    def held(csvlk_id: Any, where: str) -> str:
        csvlk_id = p.guid(csvlk_id, where)
        if csvlk_id not in usable:
            p.add(where, f"CSVLK {csvlk_id} is not a usable CSVLK record")
        return csvlk_id

    office = [
        held(cid, f"genuine_host_model.office_csvlk_ids[{i}]")
        for i, cid in enumerate(model.get("office_csvlk_ids") or [])
    ]
    for cid in office:
        if cid in usable and not usable[cid]["host_key_family"].startswith("office-"):
            p.add("genuine_host_model.office_csvlk_ids", f"{cid} is not an Office host key")
    requirements = []
    for i, rec in enumerate(model.get("office_host_requirements") or []):
        where = f"genuine_host_model.office_host_requirements[{i}]"
        requirements.append(
            {
                "csvlk_id": held(rec.get("csvlk_id"), where + ".csvlk_id"),
                "server_min_build": p.integer(rec.get("server_min_build"), where, 1),
                "client_min_build": p.integer(rec.get("client_min_build"), where, 1),
                "verified": rec.get("status") == "sourced",
            }
        )
    if {r["csvlk_id"] for r in requirements} != set(office):
        p.add("genuine_host_model", "office_host_requirements do not match office_csvlk_ids")
    by_build = []
    for i, rec in enumerate(model.get("by_build") or []):
        where = f"genuine_host_model.by_build[{i}]"
        build = p.integer(rec.get("build"), where + ".build", 1)
        if build not in builds:
            p.add(where, f"build {build} is not a host build")
        role = rec.get("host_role")
        if role not in HOST_ROLES:
            p.add(where, f"host_role not one of {HOST_ROLES}")
        windows = rec.get("windows_csvlk_id")
        if role == "none":
            if windows is not None or rec.get("office_csvlk_ids"):
                p.add(where, "a build that cannot host KMS holds no CSVLK")
        else:
            windows = held(windows, where + ".windows_csvlk_id")
            if windows in usable and not usable[windows]["host_key_family"].startswith("windows-"):
                p.add(where, f"{windows} is not a Windows host key")
        offices = [
            held(cid, f"{where}.office_csvlk_ids[{j}]")
            for j, cid in enumerate(rec.get("office_csvlk_ids") or [])
        ]
        if not set(offices) <= set(office):
            p.add(where, "office_csvlk_ids names a key outside office_csvlk_ids")
        by_build.append(
            {
                "build": build,
                "host_role": role,
                "windows_csvlk_id": windows,
                "office_csvlk_ids": offices,
                "verified": rec.get("status") == "sourced",
            }
        )
    p.unique((str(b["build"]) for b in by_build), "genuine_host_model.by_build build")
    if {b["build"] for b in by_build} != builds:
        p.add("genuine_host_model.by_build", "does not cover exactly the host builds")
    return {
        "office_csvlk_ids": office,
        "office_host_requirements": requirements,
        "by_build": sorted(by_build, key=lambda b: b["build"]),
    }


def _host_builds(doc: Mapping[str, Any], p: _Problems) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(_records(doc, "host_builds", p)):
        where = f"host_builds[{i}]"
        out.append(
            {
                "build": p.integer(rec.get("build"), where + ".build", 1),
                "platform_id": p.integer(rec.get("platform_id"), where + ".platform_id", 1),
                "name": p.text(rec.get("name"), where + ".name"),
                "release_date": p.date(rec.get("release_date"), where + ".release_date"),
                "uses_ndr64": p.flag(rec.get("uses_ndr64"), where + ".uses_ndr64"),
                "use_for_epid": p.flag(rec.get("use_for_epid"), where + ".use_for_epid"),
                "may_be_server": p.flag(rec.get("may_be_server"), where + ".may_be_server"),
            }
        )
    p.unique((str(b["build"]) for b in out), "host_builds build")
    return sorted(out, key=lambda b: b["build"])


def _vlmcsd_csvlks(
    doc: Mapping[str, Any],
    kms: list[dict[str, Any]],
    builds: set[int],
    p: _Problems,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(_records(doc, "vlmcsd_csvlk_table", p)):
        where = f"vlmcsd_csvlk_table[{i}]"
        index = p.integer(rec.get("vlmcsd_index"), where + ".vlmcsd_index")
        group = p.integer(rec.get("group_id"), where + ".group_id", 1)
        low = p.integer(rec.get("min_key_id"), where + ".min_key_id")
        high = p.integer(rec.get("max_key_id"), where + ".max_key_id")
        epid = rec.get("default_epid_builtin_vlmcsd")
        match = EPID_RE.match(epid) if isinstance(epid, str) else None
        if match is None:
            p.add(where, f"default ePID malformed: {epid!r}")
        else:
            key_id = int(match["key_hi"]) * 1_000_000 + int(match["key_lo"])
            if int(match["group"]) != group or not low <= key_id <= high:
                p.add(where, f"default ePID {epid} does not fit group {group} / {low}..{high}")
            if int(match["build"]) not in builds:
                p.add(where, f"default ePID {epid} names an unknown host build")
        if rec.get("default_epid_kmd_file") != epid:
            # Only the built-in ePID is kept; a diverging .kmd value would need a field of its own.
            p.add(where, "default_epid_kmd_file differs from default_epid_builtin_vlmcsd")
        expected = {k["id"] for k in kms if k["vlmcsd_csvlk_index"] == index}
        if set(rec.get("used_for_kms_ids") or []) != expected:
            p.add(where, "used_for_kms_ids disagrees with kms_ids[].vlmcsd_csvlk_index")
        out.append(
            {
                "index": index,
                "ini_name": p.text(rec.get("ini_name"), where + ".ini_name"),
                "name": p.text(rec.get("name"), where + ".name"),
                "group_id": group,
                "min_key_id": low,
                "max_key_id": high,
                "release_date": p.date(rec.get("release_date"), where + ".release_date"),
                "min_active_clients": p.integer(rec.get("min_active_clients"), where),
                "default_epid": epid,
            }
        )
    out.sort(key=lambda v: v["index"])
    if [v["index"] for v in out] != list(range(len(out))) or not out:
        p.add("vlmcsd_csvlk_table", "indexes are not 0..n-1")
    return out


def build(doc: Mapping[str, Any], source_sha256: str) -> dict[str, Any]:
    """Validate the source document and return the catalogue document; raise BuildError."""
    p = _Problems()
    if doc.get("schema") != SOURCE_SCHEMA:
        raise BuildError(f"source schema is {doc.get('schema')!r}, expected {SOURCE_SCHEMA!r}")
    used_fixes: set[object] = set()

    applications = _applications(doc, p)
    kms_ids = _kms_ids(doc, {a["id"] for a in applications}, p)
    kms_by_id = {k["id"]: k for k in kms_ids}
    skus = _skus(doc, kms_by_id, p)
    dropped_skus = _skus_without_id(doc, p)
    csvlks, dropped_csvlks = _csvlks(doc, kms_by_id, p, used_fixes)
    host_builds = _host_builds(doc, p)
    build_numbers = {b["build"] for b in host_builds}
    vlmcsd = _vlmcsd_csvlks(doc, kms_ids, build_numbers, p)
    model = _genuine_host_model(doc, csvlks, build_numbers, p)

    for rec in [*applications, *kms_ids]:
        index = rec["vlmcsd_csvlk_index"]
        if index is not None and not 0 <= index < len(vlmcsd):
            p.add(rec["name"], f"vlmcsd_csvlk_index {index} out of range")
    for fix in CSVLK_DATE_FILLS:
        if fix not in used_fixes:
            p.add("fix tables", f"{fix} is no longer needed by the source; remove it")

    counts = doc.get("counts")
    if not isinstance(counts, Mapping):
        p.add("counts", "missing")
        counts = {}
    actual = {
        "applications": len(applications),
        "kms_ids": len(kms_ids),
        "skus": len(skus),
        "skus_with_gvlk": sum(1 for s in skus if s["gvlk"]),
        "skus_without_id": len(dropped_skus),
        "csvlks": len(csvlks) + len(dropped_csvlks),
        "host_builds": len(host_builds),
        "vlmcsd_csvlk_table": len(vlmcsd),
        "kms_ids_in_microsoft_counted_id_list": sum(1 for k in kms_ids if k["in_microsoft_list"]),
        "kms_ids_superseded": sum(1 for k in kms_ids if k["superseded_by"]),
        "kms_ids_placeholder": sum(1 for k in kms_ids if k["is_placeholder"]),
        "genuine_host_model_builds": len(model.get("by_build", ())),
    }
    claimed = {key: counts.get(key) for key in actual}
    if claimed != actual:
        p.add("counts", f"source says {claimed}, records give {actual}")
    if p.items:
        raise BuildError("\n".join(p.items))

    conflicts = doc.get("data_conflicts") or []
    provenance = {
        "source": {
            "file": "kms-products.json",
            "schema": doc.get("schema"),
            "generated": doc.get("generated"),
            "sha256": source_sha256,
        },
        "data_sets": doc.get("sources"),
        "source_counts": counts,
        "source_notes": doc.get("notes"),
        "source_data_conflicts": len(conflicts),
        "source_changes_from_1": len(doc.get("changes_from_1") or ()),
        "dropped": {
            "skus_without_id": dropped_skus,
            "csvlks_without_epid_data": dropped_csvlks,
        },
        "fixes": {
            "csvlk_release_dates": [
                f"{name} ({cid}): {date}, {why}"
                for (cid, name), (date, why) in sorted(CSVLK_DATE_FILLS.items())
            ],
        },
    }
    catalog = {
        "schema": SCHEMA,
        "provenance": provenance,
        "applications": applications,
        "kms_ids": kms_ids,
        "skus": skus,
        "csvlks": csvlks,
        "host_builds": host_builds,
        "vlmcsd_csvlks": vlmcsd,
        "genuine_host_model": model,
    }
    add_families(catalog)
    return catalog


def render(catalog: Mapping[str, Any]) -> str:
    """Serialize deterministically: sorted keys, one record per line (compact, diff-friendly)."""

    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    keys = sorted(catalog)
    lines = ["{"]
    for n, key in enumerate(keys):
        tail = "," if n < len(keys) - 1 else ""
        value = catalog[key]
        if isinstance(value, list) and value:
            lines.append(f"{dump(key)}:[")
            lines.extend(
                dump(item) + ("," if i < len(value) - 1 else "") for i, item in enumerate(value)
            )
            lines.append("]" + tail)
        elif isinstance(value, Mapping):
            lines.append(f"{dump(key)}:{json.dumps(value, sort_keys=True, indent=1)}{tail}")
        else:
            lines.append(f"{dump(key)}:{dump(value)}{tail}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def build_from_file(source: Path) -> str:
    """Read, validate and render the source file; return the products.json text."""
    raw = source.read_bytes()
    doc = json.loads(raw)
    if not isinstance(doc, Mapping):
        raise BuildError(f"{source}: top level is not a JSON object")
    return render(build(doc, hashlib.sha256(raw).hexdigest()))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if --output is not up to date")
    args = parser.parse_args(argv)
    try:
        text = build_from_file(args.source)
    except (OSError, ValueError, BuildError) as exc:
        print(f"build_catalog: {args.source}: FAILED\n{exc}", file=sys.stderr)
        return 1
    doc = json.loads(text)
    if args.check:
        current = args.output.read_text(encoding="ascii") if args.output.exists() else None
        if current != text:
            print(
                f"build_catalog: {args.output} is stale; rerun tools/build_catalog.py",
                file=sys.stderr,
            )
            return 1
        print(f"build_catalog: {args.output} is up to date", file=sys.stderr)
        return 0
    args.output.write_text(text, encoding="ascii")
    counts = {k: len(v) for k, v in doc.items() if isinstance(v, list)}
    dropped = doc["provenance"]["dropped"]
    print(f"build_catalog: wrote {args.output} ({len(text)} bytes): {counts}", file=sys.stderr)
    for what, names in dropped.items():
        print(f"  dropped {what}: {len(names)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
