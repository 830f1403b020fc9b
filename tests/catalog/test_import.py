"""`kmsgate products import`: py-kms and vlmcsd product files merged into a catalogue file,
which `serve --catalog` loads to serve products newer than the release."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.catalog import default_catalog
from kmsgate.catalog.foreign import ForeignFileError
from kmsgate.catalog.interchange import load_document, merge, read_foreign
from kmsgate.catalog.loading import catalog_from_dict, catalog_from_file
from kmsgate.catalog.pykms_xml import read_pykms_xml
from kmsgate.catalog.vlmcsd_kmd import read_vlmcsd_kmd
from kmsgate.config.settings import ServeSettings
from kmsgate.protocol.epid import parse_epid
from kmsgate.server.host import KmsHost
from tests.catalog.peer_formats import pykms_xml, vlmcsd_kmd
from tests.support.kms import RawClient, make_request

pytestmark = pytest.mark.integration

CATALOG = default_catalog()
TODAY = datetime.date(2026, 12, 2)
KMSGATE = Path(sys.executable).with_name("kmsgate")
WINDOWS_APP = "55c92734-d682-4d71-983e-d6ec3f16059f"
FUTURE = {
    "app": WINDOWS_APP,
    "id": "a1b2c3d4-0000-4000-8000-000000002028",
    "name": "Windows Server 2028",
    "n": "5",
    "sku": "a1b2c3d4-0000-4000-8000-00000000dc28",
    "sku_name": "Windows Server 2028 Datacenter",
    "gvlk": "NPPR9-FWDCX-D2C8J-H872K-2YT43",  # taken by Windows 10/11 Enterprise: dropped
}
SERVER_2025_CSVLK = "84e331f6-4279-48c4-ab10-b75139181351"


def test_pykms_file_round_trips_every_product() -> None:
    foreign = read_pykms_xml(pykms_xml(CATALOG))
    assert set(foreign.kms_ids) == {str(k.id) for k in CATALOG.kms_ids}
    for kms in CATALOG.kms_ids:
        read = foreign.kms_ids[str(kms.id)]
        assert (read["name"], read["application_id"], read["default_protocol"],
                read["n_count_policy"], read["is_retail"], read["is_preview"]) == (
            kms.name, str(kms.application_id), kms.default_protocol, kms.n_count_policy,
            kms.is_retail, kms.is_preview,
        )  # fmt: skip
    assert set(foreign.skus) == {str(s.id) for s in CATALOG.skus}  # nil ids skipped
    for sku in CATALOG.skus:
        read = foreign.skus[str(sku.id)]
        assert (read["name"], read["kms_id"], read["gvlk"], read["gvlk_is_generated"]) == (
            sku.name, str(sku.kms_id), sku.gvlk, sku.gvlk_is_generated,
        )  # fmt: skip
    assert len(foreign.csvlks) == len(CATALOG.csvlks)
    for read, csvlk in zip(foreign.csvlks, CATALOG.csvlks, strict=True):
        assert (read["name"], read["group_id"]) == (csvlk.name, csvlk.group_id)
        assert set(read["activates_kms_ids"]) == {str(k) for k in csvlk.activates_kms_ids}
    assert {b: (v["platform_id"], v["uses_ndr64"], v["release_date"])
            for b, v in foreign.host_builds.items()} == {
        b.build: (b.platform_id, b.uses_ndr64, b.release_date.isoformat())
        for b in CATALOG.host_builds
    }  # fmt: skip
    # Merged back, it adds nothing: the catalogue already knows all of it.
    doc, report = merge(load_document(None), foreign, today=TODAY)
    assert report.added == {}
    assert {k: v for k, v in doc.items() if k != "provenance"} == {
        k: v for k, v in load_document(None).items() if k != "provenance"
    }


def test_vlmcsd_file_round_trips_every_product() -> None:
    foreign = read_vlmcsd_kmd(vlmcsd_kmd(CATALOG))
    assert set(foreign.applications) == {str(a.id) for a in CATALOG.applications}
    assert set(foreign.kms_ids) == {str(k.id) for k in CATALOG.kms_ids}
    assert set(foreign.skus) == {str(s.id) for s in CATALOG.skus}
    for kms in CATALOG.kms_ids:
        read = foreign.kms_ids[str(kms.id)]
        assert (read["name"], read["application_id"], read["default_protocol"],
                read["n_count_policy"]) == (
            kms.name, str(kms.application_id), kms.default_protocol, kms.n_count_policy,
        )  # fmt: skip
    assert [(c["group_id"], c["min_key_id"], c["max_key_id"]) for c in foreign.csvlks] == [
        (v.group_id, v.min_key_id, v.max_key_id) for v in CATALOG.vlmcsd_csvlks
    ]
    _, report = merge(load_document(None), foreign, today=TODAY)
    assert report.added == {}


def test_a_newer_product_is_added_and_covered_by_the_held_key() -> None:
    foreign = read_pykms_xml(pykms_xml(CATALOG, extra_kms=[FUTURE]))
    # py-kms says the Server 2025 host key activates the new product too.
    for csvlk in foreign.csvlks:
        if csvlk["id"] == SERVER_2025_CSVLK:
            csvlk["activates_kms_ids"].append(FUTURE["id"])
    doc, report = merge(load_document(None), foreign, today=TODAY)
    assert report.added == {"kms_ids": 1, "skus": 1}
    assert any("GVLK NPPR9" in note for note in report.notes)
    merged = catalog_from_dict(doc)
    sku = merged.resolve_product("Server 2028 Datacenter")
    assert (str(sku.id), str(sku.kms_id), sku.gvlk) == (FUTURE["sku"], FUTURE["id"], None)
    held = merged.csvlk(uuid.UUID(SERVER_2025_CSVLK))
    assert held is not None and uuid.UUID(FUTURE["id"]) in held.activates_kms_ids
    assert doc["provenance"]["imported"][0]["added"] == {"kms_ids": 1, "skus": 1}


async def test_serve_with_an_imported_catalogue_activates_the_new_product(
    tmp_path: Path,
) -> None:
    foreign = read_pykms_xml(pykms_xml(CATALOG, extra_kms=[FUTURE]))
    for csvlk in foreign.csvlks:
        if csvlk["id"] == SERVER_2025_CSVLK:
            csvlk["activates_kms_ids"].append(FUTURE["id"])
    path = tmp_path / "products.json"
    path.write_text(json.dumps(merge(load_document(None), foreign, today=TODAY)[0]))
    settings = ServeSettings(
        listen=["127.0.0.1:0"], data_dir=tmp_path, catalog=path, deny_unknown_products=True
    )
    async with KmsHost(settings, catalog=catalog_from_file(path)) as host:
        request = dataclasses.replace(
            make_request(6), kms_counted_id=uuid.UUID(FUTURE["id"]), sku_id=uuid.UUID(FUTURE["sku"])
        )
        client = await RawClient.connect(host.port)
        try:
            await client.bind()
            answer = await client.activate(6, request)
        finally:
            await client.close()
    assert answer.response.epid == host.identity.windows.epid
    assert parse_epid(answer.response.epid).group_id == 4919


def test_cli_import_writes_a_file_serve_accepts(tmp_path: Path) -> None:
    source = tmp_path / "KmsDataBase.xml"
    source.write_bytes(pykms_xml(CATALOG, extra_kms=[FUTURE]))
    output = tmp_path / "products.json"
    done = subprocess.run(
        [str(KMSGATE), "products", "import", str(source), "--output", str(output)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "added 1 kms_ids, 1 skus from py-kms KmsDataBase.xml" in done.stdout
    listed = subprocess.run(
        [str(KMSGATE), "products", "--catalog", str(output), "--search", "2028", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert [p["name"] for p in json.loads(listed.stdout)] == ["Windows Server 2028 Datacenter"]
    kmd = tmp_path / "vlmcsd.kmd"
    kmd.write_bytes(vlmcsd_kmd(CATALOG))
    again = subprocess.run(
        [str(KMSGATE), "products", "import", str(kmd), "-o", str(tmp_path / "k.json"),
         "--catalog", str(output)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0 and "added nothing from vlmcsd KMS data file" in again.stdout


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"<notkms/>", "not <KmsData>"),
        (b"<KmsData><AppItems><AppItem Id='zz'/></AppItems></KmsData>", "not a GUID"),
        (b"not xml at all", "not XML"),
        (b"KMD\x00" + bytes(10), "not a vlmcsd"),
        (b"KMD\x00\x00\x00\x03\x00" + bytes(60), "version 3.0"),
    ],
)
def test_bad_files_are_clear_errors(content: bytes, says: str, tmp_path: Path) -> None:
    with pytest.raises(ForeignFileError, match=says):
        read_foreign(content)
    source = tmp_path / "bad"
    source.write_bytes(content)
    done = subprocess.run(
        [str(KMSGATE), "products", "import", str(source), "-o", str(tmp_path / "o.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and says in done.stderr
    assert not (tmp_path / "o.json").exists()


def test_serve_refuses_a_broken_catalogue_before_starting(tmp_path: Path) -> None:
    broken = tmp_path / "products.json"
    broken.write_text('{"schema": "kmsgate-catalog/1"}')
    done = subprocess.run(
        [str(KMSGATE), "serve", "--catalog", str(broken), "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"catalogue {broken}" in done.stderr and "schema" in done.stderr


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_kmd_reader_never_fails_otherwise(tail: bytes) -> None:
    real = vlmcsd_kmd(CATALOG)
    for data in (b"KMD\x00" + tail, real[: len(tail)], real[:48] + tail):
        with contextlib.suppress(ForeignFileError):
            read_vlmcsd_kmd(data)
