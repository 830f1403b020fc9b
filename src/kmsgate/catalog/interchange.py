"""Product data of the peers (py-kms's KmsDataBase.xml, vlmcsd's .kmd file) merged into a
kmsgate catalogue, so that products newer than a release can be served (`--catalog FILE`)."""

from __future__ import annotations

import copy
import datetime
import json
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from kmsgate.catalog.families import add_families
from kmsgate.catalog.lookup import DATA_FILE, SCHEMA, Catalog
from kmsgate.errors import KmsgateError

KMD_MAGIC = b"KMD\x00"
_KMD_HEADER = struct.Struct("<4sHHB3x3i3Q")
_KMD_CSVLK = struct.Struct("<QIIIB3x")
_KMD_ITEM = struct.Struct("<16sQ8B")
_PROTOCOLS = {"4.0": 4, "5.0": 5, "6.0": 6}
NIL = uuid.UUID(int=0)


class ForeignFileError(KmsgateError, ValueError):
    """The file is not a product file of the named format; the message says where."""


@dataclass
class ForeignData:
    """Products read from a peer's file, in kmsgate's terms (ids as canonical strings)."""

    source: str
    applications: dict[str, dict[str, Any]] = field(default_factory=dict)
    kms_ids: dict[str, dict[str, Any]] = field(default_factory=dict)
    skus: dict[str, dict[str, Any]] = field(default_factory=dict)
    csvlks: list[dict[str, Any]] = field(default_factory=list)
    host_builds: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class MergeReport:
    """What an import added to the catalogue and what it left as it was."""

    added: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def count(self, table: str, *, added: bool) -> None:
        target = self.added if added else self.kept
        target[table] = target.get(table, 0) + 1


def _guid(text: str | None, where: str) -> str:
    try:
        return str(uuid.UUID((text or "").strip().strip("{}")))
    except ValueError:
        raise ForeignFileError(f"{where}: {text!r} is not a GUID") from None


def _flag(element: ElementTree.Element, name: str) -> bool:
    return (element.get(name) or "false").strip().lower() == "true"


def _int(text: str | None, where: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise ForeignFileError(f"{where}: {text!r} is not a number") from None


def read_pykms_xml(data: bytes) -> ForeignData:
    """Read py-kms's KmsDataBase.xml (Hotbird64's KmsData 1.x format)."""
    try:
        root = ElementTree.fromstring(data)  # noqa: S314 - a local admin's own file
    except ElementTree.ParseError as exc:
        raise ForeignFileError(f"not XML: {exc}") from None
    if root.tag != "KmsData":
        raise ForeignFileError(f"root element is <{root.tag}>, not <KmsData>")
    out = ForeignData("py-kms KmsDataBase.xml")
    for build in root.iter("WinBuild"):
        number = _int(build.get("BuildNumber"), "WinBuild BuildNumber")
        if number is None:
            continue
        out.host_builds[number] = {
            "build": number,
            "name": build.get("DisplayName") or f"build {number}",
            "platform_id": _int(build.get("PlatformId"), f"WinBuild {number} PlatformId") or 0,
            "uses_ndr64": _flag(build, "UsesNDR64"),
            "use_for_epid": _flag(build, "UseForEpid"),
            "may_be_server": _flag(build, "MayBeServer"),
            "release_date": _pykms_date(build.get("MinDate")),
        }
    for app in root.iter("AppItem"):
        app_id = _guid(app.get("Id"), "AppItem Id")
        out.applications[app_id] = {
            "id": app_id,
            "name": app.get("DisplayName") or app_id,
            "min_active_clients": _int(app.get("MinActiveClients"), "MinActiveClients") or 50,
            "vlmcsd_csvlk_index": _int(app.get("VlmcsdIndex"), "VlmcsdIndex") or 0,
        }
        for kms in app.iter("KmsItem"):
            kms_id = _guid(kms.get("Id"), "KmsItem Id")
            protocol = _PROTOCOLS.get((kms.get("DefaultKmsProtocol") or "6.0").strip())
            if protocol is None:
                raise ForeignFileError(f"KmsItem {kms_id}: unknown protocol")
            out.kms_ids.setdefault(
                kms_id,
                {
                    "id": kms_id,
                    "name": kms.get("DisplayName") or kms_id,
                    "application_id": app_id,
                    "default_protocol": protocol,
                    "n_count_policy": _int(kms.get("NCountPolicy"), "NCountPolicy") or 25,
                    "is_retail": _flag(kms, "IsRetail"),
                    "is_preview": _flag(kms, "IsPreview"),
                },
            )
            for sku in kms.iter("SkuItem"):
                sku_id = _guid(sku.get("Id"), "SkuItem Id")
                if sku_id == str(NIL):
                    continue  # py-kms lists SKUs of unknown id with the nil GUID
                out.skus.setdefault(
                    sku_id,
                    {
                        "id": sku_id,
                        "name": sku.get("DisplayName") or sku_id,
                        "kms_id": kms_id,
                        "gvlk": (sku.get("Gvlk") or "").strip() or None,
                        "gvlk_is_generated": _flag(sku, "IsGeneratedGvlk"),
                    },
                )
    for csvlk in root.iter("CsvlkItem"):
        name = csvlk.get("DisplayName") or "CSVLK"
        out.csvlks.append(
            {
                "id": _guid(csvlk.get("Id"), f"CsvlkItem {name}") if csvlk.get("Id") else None,
                "name": name,
                "group_id": _int(csvlk.get("GroupId"), f"CsvlkItem {name} GroupId"),
                "min_key_id": _int(csvlk.get("MinKeyId"), f"CsvlkItem {name} MinKeyId"),
                "max_key_id": _int(csvlk.get("MaxKeyId"), f"CsvlkItem {name} MaxKeyId"),
                "is_lab": _flag(csvlk, "IsLab"),
                "is_preview": _flag(csvlk, "IsPreview"),
                "release_date": _pykms_date(csvlk.get("ReleaseDate")),
                "activates_kms_ids": [
                    _guid(a.get("KmsItem"), f"CsvlkItem {name} Activate")
                    for a in csvlk.iter("Activate")
                ],
            }
        )
    return out


def _pykms_date(text: str | None) -> str | None:
    """py-kms writes day/month/year; the catalogue keeps ISO dates."""
    if not text:
        return None
    try:
        day, month, year = (int(part) for part in text.split("/"))
        return datetime.date(year, month, day).isoformat()
    except ValueError:
        return None


def read_vlmcsd_kmd(data: bytes) -> ForeignData:
    """Read vlmcsd's binary KMS data file (vlmcsd.kmd, KMD format 2.x)."""
    if len(data) < _KMD_HEADER.size or data[:4] != KMD_MAGIC:
        raise ForeignFileError("not a vlmcsd KMS data file (no KMD magic)")
    (_, minor, major, csvlk_count, apps, kmss, skus, app_off, kms_off, sku_off) = (
        _KMD_HEADER.unpack_from(data)
    )
    if major != 2:
        raise ForeignFileError(f"KMD version {major}.{minor} is not supported (2.x is)")

    def text_at(offset: int) -> str:
        end = data.find(b"\x00", offset)
        if offset <= 0 or offset >= len(data) or end < 0:
            raise ForeignFileError(f"string offset {offset} outside the file")
        return data[offset:end].decode("utf-8", "replace")

    def items(offset: int, count: int, what: str) -> list[tuple[Any, ...]]:
        if count < 0 or offset + count * _KMD_ITEM.size > len(data):
            raise ForeignFileError(f"{what} table outside the file")
        return [_KMD_ITEM.unpack_from(data, offset + i * _KMD_ITEM.size) for i in range(count)]

    out = ForeignData("vlmcsd KMS data file")
    csvlk_table = []
    for i in range(csvlk_count):
        position = _KMD_HEADER.size + i * _KMD_CSVLK.size
        if position + _KMD_CSVLK.size > len(data):
            raise ForeignFileError("CSVLK table outside the file")
        epid_offset, group, low, high, min_clients = _KMD_CSVLK.unpack_from(data, position)
        csvlk_table.append((text_at(epid_offset), group, low, high, min_clients))
    app_ids = []
    for guid, name_off, _, _, _, _, _, _, epid_index, _ in items(app_off, apps, "application"):
        app_id = str(uuid.UUID(bytes_le=guid))
        app_ids.append(app_id)
        min_clients = csvlk_table[epid_index][4] if epid_index < len(csvlk_table) else 50
        out.applications[app_id] = {
            "id": app_id,
            "name": text_at(name_off),
            "min_active_clients": min_clients,
            "vlmcsd_csvlk_index": epid_index,
        }
    kms_ids = []
    for row in items(kms_off, kmss, "KMS item"):
        guid, name_off, app_index, _, protocol, n_count, retail, preview, epid_index, _ = row
        kms_id = str(uuid.UUID(bytes_le=guid))
        kms_ids.append(kms_id)
        if app_index >= len(app_ids) or protocol not in (4, 5, 6):
            raise ForeignFileError(f"KMS item {kms_id} names a bad application or protocol")
        out.kms_ids[kms_id] = {
            "id": kms_id,
            "name": text_at(name_off),
            "application_id": app_ids[app_index],
            "default_protocol": protocol,
            "n_count_policy": n_count,
            "is_retail": bool(retail),
            "is_preview": bool(preview),
            "vlmcsd_csvlk_index": epid_index,
        }
    for guid, name_off, _, kms_index, _, _, _, _, _, _ in items(sku_off, skus, "SKU"):
        sku_id = str(uuid.UUID(bytes_le=guid))
        if kms_index >= len(kms_ids):
            raise ForeignFileError(f"SKU {sku_id} names KMS item {kms_index}, which does not exist")
        out.skus[sku_id] = {
            "id": sku_id,
            "name": text_at(name_off),
            "kms_id": kms_ids[kms_index],
            "gvlk": None,
            "gvlk_is_generated": False,
        }
    for index, (_, group, low, high, _) in enumerate(csvlk_table):
        covered = [k for k, v in out.kms_ids.items() if v["vlmcsd_csvlk_index"] == index]
        out.csvlks.append(
            {
                "id": None,
                "name": f"vlmcsd CSVLK {index}",
                "group_id": group,
                "min_key_id": low,
                "max_key_id": high,
                "is_lab": False,
                "is_preview": False,
                "release_date": None,
                "activates_kms_ids": covered,
            }
        )
    return out


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
        Catalog.from_dict(doc)
    except ValueError as exc:
        raise ForeignFileError(f"the merged catalogue is inconsistent: {exc}") from None
    return doc, report


def load_document(path: Path | None) -> dict[str, Any]:
    """A catalogue file's document, or the built-in catalogue's (the base of an import)."""
    if path is None:
        import importlib.resources

        raw = importlib.resources.files("kmsgate.catalog").joinpath(DATA_FILE).read_bytes()
    else:
        raw = path.read_bytes()
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ForeignFileError(f"{path}: not a catalogue file")
    return doc


def dump(doc: Mapping[str, Any]) -> str:
    """The catalogue document as `--catalog` reads it."""
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True) + "\n"
