"""Product families: the bounded grouping of products that metrics label and the store keeps.

A family ("windows", "windows-server", "office-2016", ...) is a catalogue fact: the builder
writes it next to every KMS id and SKU in products.json, and an import fills it in for the
records it adds. The rule below is the one place that derives it from the names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

UNKNOWN_FAMILY: Final = "unknown"

_SERVER_WORD = re.compile(r"\bServer\b")
_OFFICE_YEAR = re.compile(r"\b(20\d\d)\b")


def family_of(app_name: str, kms_name: str, sku_name: str = "") -> str:
    """Family of one catalogue entry, from its application and KMS id (or SKU) names."""
    if app_name.startswith("Office"):
        year = _OFFICE_YEAR.search(kms_name)
        return f"office-{year.group(1)}" if year else "office"
    if app_name.startswith("Windows"):
        # KMS ids group editions by host key, so they say "Server"; a few preview SKUs sit
        # under a client id yet name themselves "Windows Server ...".
        if _SERVER_WORD.search(kms_name) or sku_name.startswith("Windows Server "):
            return "windows-server"
        return "windows"
    return UNKNOWN_FAMILY


def family_label(family: str) -> str:
    """Human label of a family for charts and stored records: "office-2016" → "Office 2016"."""
    if family == "windows-server":
        return "Windows Server"
    if family.startswith("office-"):
        return f"Office {family.removeprefix('office-')}"
    return family.capitalize()


def add_families(doc: Mapping[str, Any]) -> None:
    """Give every KMS id and SKU record of a catalogue document without a family its family."""
    apps = {app["id"]: app["name"] for app in doc["applications"]}
    kms_ids: dict[str, MutableMapping[str, Any]] = {kms["id"]: kms for kms in doc["kms_ids"]}
    for kms in kms_ids.values():
        if "family" not in kms:
            kms["family"] = family_of(apps.get(kms["application_id"], ""), kms["name"])
    for sku in doc["skus"]:
        if "family" not in sku:
            owner = kms_ids.get(sku["kms_id"])
            app_name = apps.get(owner["application_id"], "") if owner is not None else ""
            kms_name = owner["name"] if owner is not None else ""
            sku["family"] = family_of(app_name, kms_name, sku["name"])
