"""Writers of the peers' product-file formats, to make test files from a kmsgate catalogue.

py-kms: KmsDataBase.xml (KmsData 1.7: WinBuilds, CsvlkItems, AppItems > KmsItem > SkuItem).
vlmcsd: the binary .kmd file (header, CSVLK table, app / KMS / SKU tables, then strings).
"""

from __future__ import annotations

import struct
import uuid
from xml.etree import ElementTree

from kmsgate.catalog import Catalog

HEADER = struct.Struct("<4sHHB3x3i3Q")
CSVLK = struct.Struct("<QIIIB3x")
ITEM = struct.Struct("<16sQ8B")


def pykms_xml(catalog: Catalog, *, extra_kms: list[dict[str, str]] | None = None) -> bytes:
    """The catalogue as py-kms writes it (dates day/month/year, booleans as "true")."""
    root = ElementTree.Element("KmsData", Version="1.7", Author="kmsgate tests")
    builds = ElementTree.SubElement(root, "WinBuilds")
    for b in catalog.host_builds:
        attrs = {
            "BuildNumber": str(b.build),
            "DisplayName": b.name,
            "PlatformId": str(b.platform_id),
            "MinDate": f"{b.release_date.day}/{b.release_date.month}/{b.release_date.year}",
        }
        for name, value in (
            ("UsesNDR64", b.uses_ndr64),
            ("UseForEpid", b.use_for_epid),
            ("MayBeServer", b.may_be_server),
        ):
            if value:
                attrs[name] = "true"
        ElementTree.SubElement(builds, "WinBuild", attrs)
    csvlks = ElementTree.SubElement(root, "CsvlkItems")
    for c in catalog.csvlks:
        low, high = max(c.key_id_blocks, key=lambda b: b[1] - b[0])
        item = ElementTree.SubElement(
            csvlks,
            "CsvlkItem",
            {
                "DisplayName": c.name,
                "GroupId": str(c.group_id),
                "MinKeyId": str(low),
                "MaxKeyId": str(high),
                **({"Id": str(c.id)} if c.id else {}),
                **({"IsLab": "true"} if c.is_lab else {}),
                **({"IsPreview": "true"} if c.is_preview else {}),
            },
        )
        for kms_id in sorted(map(str, c.activates_kms_ids)):
            ElementTree.SubElement(item, "Activate", KmsItem=kms_id)
    apps = ElementTree.SubElement(root, "AppItems")
    for app in catalog.applications:
        app_item = ElementTree.SubElement(
            apps,
            "AppItem",
            DisplayName=app.name,
            Id="{" + str(app.id) + "}",
            VlmcsdIndex=str(app.vlmcsd_csvlk_index),
            MinActiveClients=str(app.min_active_clients),
        )
        for kms in catalog.kms_ids:
            if kms.application_id != app.id:
                continue
            kms_item = ElementTree.SubElement(
                app_item,
                "KmsItem",
                {
                    "DisplayName": kms.name,
                    "Id": str(kms.id),
                    "DefaultKmsProtocol": f"{kms.default_protocol}.0",
                    "NCountPolicy": str(kms.n_count_policy),
                    **({"IsRetail": "true"} if kms.is_retail else {}),
                    **({"IsPreview": "true"} if kms.is_preview else {}),
                },
            )
            for sku in catalog.skus:
                if sku.kms_id == kms.id:
                    ElementTree.SubElement(
                        kms_item,
                        "SkuItem",
                        {
                            "DisplayName": sku.name,
                            "Id": str(sku.id),
                            "Gvlk": sku.gvlk or "",
                            **({"IsGeneratedGvlk": "true"} if sku.gvlk_is_generated else {}),
                        },
                    )
            # py-kms keeps SKUs of unknown id under the nil GUID; an import must skip them.
            ElementTree.SubElement(
                kms_item, "SkuItem", DisplayName=f"{kms.name} [nil]", Id=str(uuid.UUID(int=0))
            )
        for extra in extra_kms or []:
            if extra["app"] == str(app.id):
                kms_item = ElementTree.SubElement(
                    app_item,
                    "KmsItem",
                    DisplayName=extra["name"],
                    Id=extra["id"],
                    DefaultKmsProtocol="6.0",
                    NCountPolicy=extra["n"],
                )
                ElementTree.SubElement(
                    kms_item,
                    "SkuItem",
                    DisplayName=extra["sku_name"],
                    Id=extra["sku"],
                    Gvlk=extra["gvlk"],
                )
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def vlmcsd_kmd(catalog: Catalog) -> bytes:
    """The catalogue's applications, KMS ids, SKUs and vlmcsd CSVLK table as a .kmd file."""
    apps = list(catalog.applications)
    kms_ids = list(catalog.kms_ids)
    skus = list(catalog.skus)
    csvlks = list(catalog.vlmcsd_csvlks)
    strings = bytearray()
    tables_at = HEADER.size + len(csvlks) * CSVLK.size
    strings_at = tables_at + (len(apps) + len(kms_ids) + len(skus)) * ITEM.size

    def text(value: str) -> int:
        offset = strings_at + len(strings)
        strings.extend(value.encode() + b"\x00")
        return offset

    body = bytearray()
    for c in csvlks:
        body += CSVLK.pack(text(c.default_epid), c.group_id, c.min_key_id, c.max_key_id,
                           c.min_active_clients)  # fmt: skip
    app_index = {a.id: i for i, a in enumerate(apps)}
    kms_index = {k.id: i for i, k in enumerate(kms_ids)}
    for a in apps:
        body += ITEM.pack(a.id.bytes_le, text(a.name), 0, 0, 0, 0, 0, 0, a.vlmcsd_csvlk_index, 0)
    for k in kms_ids:
        body += ITEM.pack(
            k.id.bytes_le, text(k.name), app_index[k.application_id], 0, k.default_protocol,
            k.n_count_policy, int(k.is_retail), int(k.is_preview), k.vlmcsd_csvlk_index or 0, 0,
        )  # fmt: skip
    for s in skus:
        body += ITEM.pack(s.id.bytes_le, text(s.name), 0, kms_index[s.kms_id], 0, 0, 0, 0, 0, 0)
    header = HEADER.pack(
        b"KMD\x00", 0, 2, len(csvlks), len(apps), len(kms_ids), len(skus),
        tables_at, tables_at + len(apps) * ITEM.size,
        tables_at + (len(apps) + len(kms_ids)) * ITEM.size,
    )  # fmt: skip
    return bytes(header + body + strings)
