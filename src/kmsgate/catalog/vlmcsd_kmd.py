"""vlmcsd's binary KMS data file (vlmcsd.kmd, KMD format 2.x) read into ForeignData."""

from __future__ import annotations

import struct
import uuid
from typing import Any

from kmsgate.catalog.foreign import ForeignData, ForeignFileError

KMD_MAGIC = b"KMD\x00"
_KMD_HEADER = struct.Struct("<4sHHB3x3i3Q")
_KMD_CSVLK = struct.Struct("<QIIIB3x")
_KMD_ITEM = struct.Struct("<16sQ8B")


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
