"""Product data of the peers (py-kms's KmsDataBase.xml, vlmcsd's .kmd file) merged into a
kmsgate catalogue, so that products newer than a release can be served (`--catalog FILE`)."""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmsgate.catalog.families import add_families
from kmsgate.catalog.foreign import ForeignData, ForeignFileError
from kmsgate.catalog.loading import SCHEMA, catalog_from_dict, shipped_data
from kmsgate.catalog.pykms_xml import read_pykms_xml
from kmsgate.catalog.vlmcsd_kmd import KMD_MAGIC, read_vlmcsd_kmd


@dataclass
class MergeReport:
    """What an import added to the catalogue and what it left as it was."""

    added: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def count(self, table: str, *, added: bool) -> None:
        target = self.added if added else self.kept
        target[table] = target.get(table, 0) + 1


def read_foreign(data: bytes, fmt: str = "auto") -> ForeignData:
    """Read a py-kms XML or vlmcsd KMD file; `auto` tells them apart by their first bytes."""
    if fmt == "auto":
        fmt = "vlmcsd" if data[:4] == KMD_MAGIC else "pykms"
    if fmt == "vlmcsd":
        return read_vlmcsd_kmd(data)
    if fmt == "pykms":
        return read_pykms_xml(data)
    raise ForeignFileError(f"unknown format {fmt!r}: use pykms, vlmcsd or auto")


def _family(name: str) -> str:
    folded = name.casefold()
    years = [w for w in folded.replace("(", " ").split() if w.isdigit() and len(w) == 4]
    prefix = "office" if "office" in folded else "windows"
    return f"{prefix}-{years[0]}" if years else f"{prefix}-imported"


def merge(
    base: Mapping[str, Any], foreign: ForeignData, *, today: datetime.date
) -> tuple[dict[str, Any], MergeReport]:
    """The base catalogue document with what the foreign file knows and it does not.

    kmsgate's own records win (they come from Microsoft's data where it exists); new
    applications, KMS ids, SKUs, host keys and builds are added, and a known host key also
    activates the new KMS ids the file says it does. The result is validated by loading it.
    """
    if base.get("schema") != SCHEMA:
        raise ForeignFileError(f"base catalogue schema is {base.get('schema')!r}, not {SCHEMA!r}")
    doc = copy.deepcopy(dict(base))
    report = MergeReport()
    apps = {a["id"]: a for a in doc["applications"]}
    for app_id, app in foreign.applications.items():
        if app_id not in apps:
            apps[app_id] = app
            doc["applications"].append(app)
        report.count("applications", added=apps[app_id] is app)
    kms_ids = {k["id"]: k for k in doc["kms_ids"]}
    new_kms = set()
    for kms_id, kms in foreign.kms_ids.items():
        if kms_id in kms_ids:
            report.count("kms_ids", added=False)
            continue
        record = {
            "is_placeholder": False,
            "superseded_by": None,
            "in_microsoft_list": None,
            "vlmcsd_csvlk_index": None,
            **kms,
        }
        kms_ids[kms_id] = record
        doc["kms_ids"].append(record)
        new_kms.add(kms_id)
        report.count("kms_ids", added=True)
    names = {s["name"].casefold() for s in doc["skus"]}
    gvlks = {s["gvlk"] for s in doc["skus"] if s["gvlk"]}
    known_skus = {s["id"] for s in doc["skus"]}
    for sku_id, sku in foreign.skus.items():
        if sku_id in known_skus:
            report.count("skus", added=False)
            continue
        record = dict(sku)
        if record["name"].casefold() in names:
            record["name"] = f"{record['name']} [imported]"
            report.notes.append(f"SKU {sku_id}: name taken, imported as {record['name']!r}")
        if record["gvlk"] in gvlks:
            report.notes.append(f"SKU {sku_id}: GVLK {record['gvlk']} belongs to another SKU")
            record["gvlk"] = None
        names.add(record["name"].casefold())
        if record["gvlk"]:
            gvlks.add(record["gvlk"])
        doc["skus"].append(record)
        report.count("skus", added=True)
    csvlks_by_id = {c["id"]: c for c in doc["csvlks"] if c["id"]}
    for csvlk in foreign.csvlks:
        activates = [k for k in csvlk["activates_kms_ids"] if k in kms_ids]
        held = csvlks_by_id.get(csvlk["id"]) if csvlk["id"] else None
        if held is not None:
            extra = sorted(set(activates) & new_kms - set(held["activates_kms_ids"]))
            held["activates_kms_ids"] = sorted({*held["activates_kms_ids"], *extra})
            report.count("csvlks", added=False)
            continue
        # A key kmsgate lacks is only worth adding for products kmsgate lacks too.
        usable = (
            csvlk["group_id"] is not None
            and csvlk["min_key_id"] is not None
            and csvlk["max_key_id"] is not None
            and csvlk["min_key_id"] <= csvlk["max_key_id"]
            and new_kms.intersection(activates)
        )
        if not usable or any(c["name"] == csvlk["name"] for c in doc["csvlks"]):
            report.count("csvlks", added=False)
            continue
        doc["csvlks"].append(
            {
                "id": csvlk["id"],
                "name": csvlk["name"],
                "group_id": csvlk["group_id"],
                "key_id_blocks": [[csvlk["min_key_id"], csvlk["max_key_id"]]],
                # Without a release date an ePID may only claim activation from today on.
                "release_date": csvlk["release_date"] or today.isoformat(),
                "is_lab": csvlk["is_lab"],
                "is_preview": csvlk["is_preview"],
                "is_azure_only": False,
                "host_key_family": _family(csvlk["name"]),
                "activates_kms_ids": sorted(set(activates)),
                "activates_basis": "imported",
            }
        )
        if csvlk["id"]:
            csvlks_by_id[csvlk["id"]] = doc["csvlks"][-1]
        report.count("csvlks", added=True)
    builds = {b["build"] for b in doc["host_builds"]}
    for number, build in sorted(foreign.host_builds.items()):
        if number in builds or build["release_date"] is None or not build["platform_id"]:
            report.count("host_builds", added=False)
            continue
        doc["host_builds"].append(build)
        # Which host keys such a host holds is not in the peers' data: it cannot host.
        doc["genuine_host_model"]["by_build"].append(
            {"build": number, "host_role": "none", "windows_csvlk_id": None,
             "office_csvlk_ids": [], "verified": False}
        )  # fmt: skip
        report.count("host_builds", added=True)
    doc["provenance"] = {
        **doc.get("provenance", {}),
        "imported": [
            *doc.get("provenance", {}).get("imported", []),
            {"from": foreign.source, "on": today.isoformat(), "added": report.added},
        ],
    }
    add_families(doc)  # the records just added
    try:
        catalog_from_dict(doc)
    except ValueError as exc:
        raise ForeignFileError(f"the merged catalogue is inconsistent: {exc}") from None
    return doc, report


def load_document(path: Path | None) -> dict[str, Any]:
    """A catalogue file's document, or the built-in catalogue's (the base of an import)."""
    raw = shipped_data() if path is None else path.read_bytes()
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ForeignFileError(f"{path}: not a catalogue file")
    return doc


def dump(doc: Mapping[str, Any]) -> str:
    """The catalogue document as `--catalog` reads it."""
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True) + "\n"
