"""py-kms's KmsDataBase.xml (Hotbird64's KmsData 1.x format) read into ForeignData."""

from __future__ import annotations

import datetime
import uuid
from xml.etree import ElementTree

from kmsgate.catalog.foreign import ForeignData, ForeignFileError

_PROTOCOLS = {"4.0": 4, "5.0": 5, "6.0": 6}
NIL = uuid.UUID(int=0)


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
