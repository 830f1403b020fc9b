#!/usr/bin/env python3
"""Build kmsgate's own product catalogue (src/kmsgate/catalog/products.json) from kms-products.json.

Usage: tools/build_catalog.py [SOURCE] [--output PATH] [--check]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "kms-products.json"
DEFAULT_OUTPUT = REPO_ROOT / "src" / "kmsgate" / "catalog" / "products.json"

SCHEMA = "kmsgate-catalog/1"
SOURCE_SCHEMA = "kms-products/1"

GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Product keys use a 24-symbol alphabet plus the positional "N" of Windows 8+ keys.
GVLK_RE = re.compile(r"^[BCDFGHJKMNPQRTVWXY2346789]{5}(?:-[BCDFGHJKMNPQRTVWXY2346789]{5}){4}$")
EPID_RE = re.compile(
    r"^(?P<platform>\d{5})-(?P<group>\d{5})-(?P<key_hi>\d{3})-(?P<key_lo>\d{6})-03-"
    r"(?P<lcid>\d{1,5})-(?P<build>\d{4,5})\.0000-(?P<day>\d{3})(?P<year>\d{4})$"
)
PROTOCOLS = {"4.0": 4, "5.0": 5, "6.0": 6}
NIL_GUID = "00000000-0000-0000-0000-000000000000"

# Known defects of the source, each fixed explicitly. Every entry must be used by the build,
# so the table cannot silently outlive the defect it works around.
KMS_ID_ALIASES: dict[str, tuple[str, str]] = {
    "10a7e9fb-ca8c-5352-88f5-91b8dbe13b22": (
        "b74263e4-0f92-46c6-bcf8-c11d5efe2959",
        "py-kms's Server 2022 CSVLKs name an id that is not its own Server 2022 KMS item "
        "(source data_conflicts); mapped to the catalogue's Windows Server 2022 KMS id",
    ),
}
# CSVLKs with an ePID group and key range but no release date; an ePID needs a lower date bound.
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
    ("f3d89bbf-c0ec-47ce-a8fa-e5a5f97e447f", "Office LTSC 2024"): (
        "2024-10-01",
        "public availability of Office LTSC 2024 (autumn 2024); an ePID must not predate it",
    ),
}


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
            }
        )
    p.unique((k["id"] for k in out), "kms_ids id")
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
        out.append(
            {
                "id": sku_id,
                "name": p.text(rec.get("name"), where + ".name"),
                "kms_id": kms_id,
                "gvlk": gvlk,
                "gvlk_is_generated": p.flag(rec.get("gvlk_is_generated"), where),
            }
        )
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


def _csvlks(
    doc: Mapping[str, Any], kms_ids: set[str], p: _Problems, used_fixes: set[object]
) -> tuple[list[dict[str, Any]], list[str]]:
    out: list[dict[str, Any]] = []
    dropped = []
    for i, rec in enumerate(_records(doc, "csvlks", p)):
        name = p.text(rec.get("name"), f"csvlks[{i}].name")
        where = f"csvlks[{i}] ({name})"
        csvlk_id = rec.get("id")
        if csvlk_id is not None:
            p.guid(csvlk_id, where + ".id")
        if any(rec.get(k) is None for k in ("group_id", "min_key_id", "max_key_id")):
            # Without a group and key-id range the record cannot be put into an ePID.
            dropped.append(name)
            continue
        group = p.integer(rec.get("group_id"), where + ".group_id", 1)
        low = p.integer(rec.get("min_key_id"), where + ".min_key_id")
        high = p.integer(rec.get("max_key_id"), where + ".max_key_id")
        if high <= low or high > 999_999_999:
            p.add(where, f"bad key-id range {low}..{high}")
        release = rec.get("release_date")
        if release is None:
            fill_key = (str(csvlk_id), name)
            fill = CSVLK_DATE_FILLS.get(fill_key)
            if fill is None:
                p.add(where, "no release_date and no entry in CSVLK_DATE_FILLS")
            else:
                release = fill[0]
                used_fixes.add(fill_key)
        activates = set()
        for kms_id in rec.get("activates_kms_ids") or []:
            kms_id = p.guid(kms_id, where + ".activates_kms_ids")
            if kms_id in KMS_ID_ALIASES:
                used_fixes.add(kms_id)
                kms_id = KMS_ID_ALIASES[kms_id][0]
            if kms_id not in kms_ids:
                p.add(where, f"activates unknown KMS id {kms_id}")
            activates.add(kms_id)
        if not activates:
            p.add(where, "activates no KMS id")
        out.append(
            {
                "id": csvlk_id,
                "name": name,
                "group_id": group,
                "min_key_id": low,
                "max_key_id": high,
                "release_date": p.date(release, where + ".release_date"),
                "is_lab": p.flag(rec.get("is_lab"), where + ".is_lab"),
                "is_preview": p.flag(rec.get("is_preview"), where + ".is_preview"),
                "activates_kms_ids": sorted(activates),
            }
        )
    out.sort(key=lambda c: (c["release_date"], c["name"].casefold(), c["id"] or ""))
    return out, sorted(dropped, key=str.casefold)


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
    csvlks, dropped_csvlks = _csvlks(doc, set(kms_by_id), p, used_fixes)
    host_builds = _host_builds(doc, p)
    vlmcsd = _vlmcsd_csvlks(doc, kms_ids, {b["build"] for b in host_builds}, p)

    for rec in [*applications, *kms_ids]:
        index = rec["vlmcsd_csvlk_index"]
        if index is not None and not 0 <= index < len(vlmcsd):
            p.add(rec["name"], f"vlmcsd_csvlk_index {index} out of range")
    for alias in KMS_ID_ALIASES:
        if alias in kms_by_id:
            p.add("KMS_ID_ALIASES", f"{alias} is now a real KMS id; drop the alias")
    for fix in [*KMS_ID_ALIASES, *CSVLK_DATE_FILLS]:
        if fix not in used_fixes:
            p.add("fix tables", f"{fix} is no longer needed by the source; remove it")

    counts = doc.get("counts")
    actual = {
        "applications": len(applications),
        "kms_ids": len(kms_ids),
        "skus": len(skus),
        "skus_with_gvlk": sum(1 for s in skus if s["gvlk"]),
        "skus_without_id": len(dropped_skus),
        "csvlks": len(csvlks) + len(dropped_csvlks),
        "host_builds": len(host_builds),
        "vlmcsd_csvlk_table": len(vlmcsd),
    }
    if counts != actual:
        p.add("counts", f"source says {counts}, records give {actual}")
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
        "dropped": {
            "skus_without_id": dropped_skus,
            "csvlks_without_epid_data": dropped_csvlks,
        },
        "fixes": {
            "kms_id_aliases": [
                f"{old} -> {new}: {why}" for old, (new, why) in sorted(KMS_ID_ALIASES.items())
            ],
            "csvlk_release_dates": [
                f"{name} ({cid}): {date}, {why}"
                for (cid, name), (date, why) in sorted(CSVLK_DATE_FILLS.items())
            ],
        },
    }
    return {
        "schema": SCHEMA,
        "provenance": provenance,
        "applications": applications,
        "kms_ids": kms_ids,
        "skus": skus,
        "csvlks": csvlks,
        "host_builds": host_builds,
        "vlmcsd_csvlks": vlmcsd,
    }


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
