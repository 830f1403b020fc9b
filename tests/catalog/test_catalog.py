"""Product catalogue: the shipped data file, its builder, lookups, CSVLK choice and resolution."""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import re
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import kmsgate.catalog
from kmsgate.catalog import (
    Application,
    Catalog,
    Csvlk,
    HostBuild,
    KmsId,
    Sku,
    default_catalog,
)

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "tools" / "build_catalog.py"
SOURCE = REPO.parent / "shared" / "data" / "kms-products.json"
SHIPPED = Path(kmsgate.catalog.__file__).with_name("products.json")
GVLK_RE = re.compile(r"^[BCDFGHJKMNPQRTVWXY2346789]{5}(-[BCDFGHJKMNPQRTVWXY2346789]{5}){4}$")

needs_source = pytest.mark.skipif(
    not SOURCE.exists(),
    reason=f"source facts {SOURCE} absent (the suite expects ../shared beside the clone)",
)

U = uuid.UUID
WINDOWS = U("55c92734-d682-4d71-983e-d6ec3f16059f")
OFFICE_2010_APP = U("59a52881-a989-479d-af46-f275c6370663")
OFFICE_APP = U("0ff1ce15-a989-479d-af46-f275c6370663")
KMS_WIN10 = U("58e2134f-8e11-4d17-9cb2-91069c151148")
KMS_WIN7 = U("7fde5219-fbfa-484a-82c9-34d1ad53e856")
KMS_SERVER_2019 = U("8449b1fb-f0ea-497a-99ab-66ca96e9a0f5")
KMS_SERVER_2022 = U("b74263e4-0f92-46c6-bcf8-c11d5efe2959")
KMS_SERVER_2025 = U("4b83307d-7788-50ff-8d1f-1861915bdb9d")
KMS_OFFICE_2010 = U("e85af946-2e25-47b7-83e1-bebcebeac611")
KMS_OFFICE_2013 = U("e6a6f1bf-9d40-40c3-aa9f-c77ba21578c0")
KMS_OFFICE_2019 = U("617d9eb1-ef36-4f82-86e0-a65ae07b96c6")
KMS_OFFICE_2024 = U("1b4db7eb-4057-5ddf-91e0-36dec72071f5")
SKU_WIN_PRO = U("2de67392-b7a7-462a-b1ca-108dd189f588")
SKU_SERVER_2019_DC = U("34e1ae55-27f8-4950-8877-7a03be5fb181")


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_catalog", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def source_doc() -> dict[str, Any]:
    if not SOURCE.exists():
        pytest.skip(f"source facts {SOURCE} absent")
    doc: dict[str, Any] = json.loads(SOURCE.read_bytes())
    return doc


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return default_catalog()


# --- the shipped file and its builder -------------------------------------------------------


@needs_source
def test_shipped_file_is_exactly_the_builder_output(builder: ModuleType) -> None:
    assert builder.build_from_file(SOURCE) == SHIPPED.read_text(encoding="ascii"), (
        "src/kmsgate/catalog/products.json is stale: run tools/build_catalog.py"
    )


@needs_source
def test_builder_check_mode_detects_a_stale_file(builder: ModuleType, tmp_path: Path) -> None:
    assert builder.main([str(SOURCE), "--output", str(SHIPPED), "--check"]) == 0
    stale = tmp_path / "products.json"
    stale.write_text(SHIPPED.read_text(encoding="ascii").replace("Windows", "Windoze", 1))
    assert builder.main([str(SOURCE), "--output", str(stale), "--check"]) == 1


@needs_source
def test_builder_writes_output_and_is_deterministic(builder: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "products.json"
    assert builder.main([str(SOURCE), "--output", str(out)]) == 0
    assert out.read_bytes() == SHIPPED.read_bytes()
    assert builder.build_from_file(SOURCE) == builder.build_from_file(SOURCE)


def _mutate(doc: dict[str, Any], table: str, name: str, field: str, value: Any) -> None:
    for rec in doc[table]:
        if rec.get("name") == name:
            rec[field] = value
            return
    raise AssertionError(f"{name} not in {table}")


@needs_source
@pytest.mark.parametrize(
    ("table", "name", "field", "value", "complaint"),
    [
        ("skus", "Windows 10/11 Pro", "id", "2DE67392-B7A7-462A-B1CA-108DD189F588", "canonical"),
        ("skus", "Windows 10/11 Pro", "kms_id", str(uuid.UUID(int=7)), "is not a KMS id"),
        ("skus", "Windows 10/11 Pro", "gvlk", "W269N-WFGWX-YVC9B-4J6C9-T83G", "5x5"),
        ("skus", "Windows 10/11 Pro", "gvlk", "W269N-WFGWX-YVC9B-4J6C9-T83GA", "5x5"),
        ("skus", "Windows 10/11 Pro", "name", "Windows 10/11 Pro N", "duplicate"),
        ("skus", "Windows 10/11 Pro", "n_count_policy", 5, "n_count_policy differs"),
        ("kms_ids", "Windows 7", "default_protocol", "7.0", "default_protocol"),
        ("kms_ids", "Windows 7", "application_id", str(uuid.UUID(int=9)), "not an application"),
        ("csvlks", "Office 2010 VL", "activates_kms_ids", [str(uuid.UUID(int=5))], "unknown KMS"),
        ("csvlks", "Office LTSC 2021", "release_date", None, "CSVLK_DATE_FILLS"),
        ("csvlks", "Office LTSC 2021", "max_key_id", 1, "key-id range"),
        ("host_builds", "Windows 7 / Server 2008 R2 SP1", "release_date", "2011-02-30", "date"),
    ],
)
def test_builder_fails_loudly_on_bad_source(
    builder: ModuleType,
    source_doc: dict[str, Any],
    table: str,
    name: str,
    field: str,
    value: Any,
    complaint: str,
) -> None:
    doc = copy.deepcopy(source_doc)
    _mutate(doc, table, name, field, value)
    with pytest.raises(builder.BuildError, match=re.escape(complaint)):
        builder.build(doc, "0" * 64)


@needs_source
def test_builder_rejects_unused_fixes_and_wrong_counts(
    builder: ModuleType, source_doc: dict[str, Any]
) -> None:
    doc = copy.deepcopy(source_doc)
    _mutate(doc, "csvlks", "Office LTSC 2024", "release_date", "2024-10-01")
    doc["counts"]["skus"] = 331
    with pytest.raises(builder.BuildError) as info:
        builder.build(doc, "0" * 64)
    assert "no longer needed" in str(info.value)
    assert "counts" in str(info.value)


def test_shipped_file_layout_is_sorted_and_compact() -> None:
    text = SHIPPED.read_text(encoding="ascii")
    doc = json.loads(text)
    assert doc["schema"] == "kmsgate-catalog/1"
    assert list(doc) == sorted(doc)
    # One record per line, keys sorted within each record.
    for line in text.splitlines():
        if line.startswith("{") and line.rstrip(",").endswith("}"):
            record = json.loads(line.rstrip(","))
            assert list(record) == sorted(record)
    names = [s["name"].casefold() for s in doc["skus"]]
    assert names == sorted(names)
    assert [b["build"] for b in doc["host_builds"]] == sorted(
        b["build"] for b in doc["host_builds"]
    )
    assert len(text) < 150_000


def test_provenance_records_source_and_dropped_records(catalog: Catalog) -> None:
    prov = catalog.provenance
    assert prov["source"]["schema"] == "kms-products/1"
    assert re.fullmatch(r"[0-9a-f]{64}", prov["source"]["sha256"])
    assert set(prov["data_sets"]) == {"pykms", "vlmcsd", "pykms-legacy"}
    assert len(prov["dropped"]["skus_without_id"]) == 10
    assert len(prov["dropped"]["csvlks_without_epid_data"]) == 16
    assert len(catalog.csvlks) + 16 == prov["source_counts"]["csvlks"]


# --- counts, types and integrity -------------------------------------------------------------


def test_default_catalog_is_loaded_once(catalog: Catalog) -> None:
    assert default_catalog() is catalog


def test_counts(catalog: Catalog) -> None:
    assert len(catalog.applications) == 3
    assert len(catalog.kms_ids) == 45
    assert len(catalog.skus) == 330
    assert sum(1 for s in catalog.skus if s.gvlk) == 284
    assert len(catalog.csvlks) == 44
    assert len(catalog.host_builds) == 30
    assert len(catalog.vlmcsd_csvlks) == 6


def test_records_have_the_documented_types(catalog: Catalog) -> None:
    for app in catalog.applications:
        assert isinstance(app, Application) and isinstance(app.id, uuid.UUID)
    for kms in catalog.kms_ids:
        assert isinstance(kms, KmsId) and isinstance(kms.id, uuid.UUID)
        assert kms.default_protocol in (4, 5, 6)
        assert kms.n_count_policy in (5, 25)
    for csvlk in catalog.csvlks:
        assert isinstance(csvlk, Csvlk)
        assert isinstance(csvlk.release_date, datetime.date)
        assert isinstance(csvlk.activates_kms_ids, frozenset) and csvlk.activates_kms_ids
        assert 0 <= csvlk.min_key_id < csvlk.max_key_id
    for build in catalog.host_builds:
        assert isinstance(build, HostBuild) and isinstance(build.release_date, datetime.date)
    sku = catalog.skus[0]
    with pytest.raises(AttributeError):
        sku.name = "changed"  # type: ignore[misc]


def test_every_sku_kms_id_and_application_resolve(catalog: Catalog) -> None:
    for sku in catalog.skus:
        assert isinstance(sku, Sku)
        kms = catalog.kms_id(sku.kms_id)
        assert kms is not None, sku
        assert catalog.application(sku.application_id) is not None
        assert (sku.application_id, sku.default_protocol, sku.n_count_policy) == (
            kms.application_id,
            kms.default_protocol,
            kms.n_count_policy,
        )


def test_every_gvlk_has_the_5x5_format(catalog: Catalog) -> None:
    gvlks = [s.gvlk for s in catalog.skus if s.gvlk is not None]
    assert gvlks
    bad = [g for g in gvlks if not GVLK_RE.match(g)]
    assert bad == []
    assert len(set(gvlks)) == len(gvlks)


# --- known lookups -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sku_id", "name", "kms_id", "protocol", "n_count", "gvlk"),
    [
        (SKU_WIN_PRO, "Windows 10/11 Pro", KMS_WIN10, 6, 25, "W269N-WFGWX-YVC9B-4J6C9-T83GX"),
        (
            SKU_SERVER_2019_DC,
            "Windows Server 2019 Datacenter",
            KMS_SERVER_2019,
            6,
            5,
            "WMDGN-G9PQG-XVVXX-R3X43-63DFG",
        ),
        (
            U("85dd8b5f-eaa4-4af3-a628-cce9e77c9a03"),
            "Office Professional Plus 2019",
            KMS_OFFICE_2019,
            6,
            5,
            "NMMKJ-6RK4F-KMJVX-8D9MJ-6MWKP",
        ),
        (
            U("b92e9980-b9d5-4821-9c94-140f632f6312"),
            "Windows 7 Professional",
            KMS_WIN7,
            4,
            25,
            "FJ82H-XT6CR-J8D7P-XQJJ2-GPDD4",
        ),
        (
            U("6f327760-8c5c-417c-9b61-836a98287e0c"),
            "Office Professional Plus 2010",
            KMS_OFFICE_2010,
            4,
            5,
            "VYBBJ-TRJPB-QFQRF-QFT4D-H3GVB",
        ),
        (
            U("b322da9c-a2e2-4058-9e4e-f59a6970bd69"),
            "Office Professional Plus 2013",
            KMS_OFFICE_2013,
            5,
            5,
            "YC7DK-G2NP3-2QQC3-J6H88-GVGXT",
        ),
    ],
)
def test_known_skus(
    catalog: Catalog,
    sku_id: uuid.UUID,
    name: str,
    kms_id: uuid.UUID,
    protocol: int,
    n_count: int,
    gvlk: str,
) -> None:
    sku = catalog.sku(sku_id)
    assert sku is not None
    assert (sku.name, sku.kms_id, sku.default_protocol, sku.n_count_policy, sku.gvlk) == (
        name,
        kms_id,
        protocol,
        n_count,
        gvlk,
    )


@pytest.mark.parametrize(
    ("kms_id", "name", "app_id", "protocol", "n_count"),
    [
        (KMS_SERVER_2019, "Windows Server 2019", WINDOWS, 6, 5),
        (KMS_WIN7, "Windows 7", WINDOWS, 4, 25),
        (KMS_OFFICE_2010, "Office 2010", OFFICE_2010_APP, 4, 5),
        (KMS_OFFICE_2013, "Office 2013", OFFICE_APP, 5, 5),
        (KMS_OFFICE_2019, "Office 2019", OFFICE_APP, 6, 5),
    ],
)
def test_known_kms_ids(
    catalog: Catalog,
    kms_id: uuid.UUID,
    name: str,
    app_id: uuid.UUID,
    protocol: int,
    n_count: int,
) -> None:
    kms = catalog.kms_id(kms_id)
    assert kms is not None
    assert (kms.name, kms.application_id, kms.default_protocol, kms.n_count_policy) == (
        name,
        app_id,
        protocol,
        n_count,
    )
    assert not kms.is_retail and not kms.is_preview


def test_applications(catalog: Catalog) -> None:
    windows = catalog.application(WINDOWS)
    office = catalog.application(OFFICE_APP)
    assert windows is not None and windows.name == "Windows" and windows.min_active_clients == 50
    assert office is not None and office.min_active_clients == 10


def test_unknown_ids_give_none(catalog: Catalog) -> None:
    stranger = U("01234567-89ab-4cde-8f01-23456789abcd")
    assert catalog.sku(stranger) is None
    assert catalog.kms_id(stranger) is None
    assert catalog.application(stranger) is None
    assert catalog.skus_for_kms_id(stranger) == ()


def test_placeholder_and_retail_flags(catalog: Catalog) -> None:
    placeholders = [k for k in catalog.kms_ids if k.is_placeholder]
    assert len(placeholders) == 11
    assert all(k.is_preview for k in placeholders)
    retail = catalog.kms_id(U("e1c51358-fe3e-4203-a4a2-3b6b20c9734e"))
    assert retail is not None and retail.is_retail


# --- CSVLK choice ----------------------------------------------------------------------------


def test_csvlk_for_office_2010_is_group_96(catalog: Catalog) -> None:
    csvlk = catalog.csvlk_for_kms_id(KMS_OFFICE_2010)
    assert csvlk.group_id == 96
    assert KMS_OFFICE_2010 in csvlk.activates_kms_ids


def test_csvlk_for_windows_10_is_a_windows_key(catalog: Catalog) -> None:
    csvlk = catalog.csvlk_for_kms_id(KMS_WIN10)
    assert csvlk.group_id == 206 or (csvlk.group_id > 206 and "Server" in csvlk.name)
    assert KMS_WIN10 in csvlk.activates_kms_ids
    assert not csvlk.is_lab and not csvlk.is_preview
    assert csvlk.name == "Windows 10 2019"


def test_unknown_kms_id_falls_back_to_the_newest_windows_client_key(catalog: Catalog) -> None:
    fallback = catalog.csvlk_for_kms_id(U("01234567-89ab-4cde-8f01-23456789abcd"))
    assert fallback == catalog.csvlk_for_kms_id(KMS_WIN10)
    assert fallback.group_id == 206


@pytest.mark.parametrize(
    ("kms_id", "group", "name"),
    [
        (KMS_SERVER_2019, 206, "Windows Server 2019"),
        # The builder maps py-kms's stray Server 2022 id onto the catalogue's one.
        (KMS_SERVER_2022, 4573, "Windows Server 2022"),
        # Newest by release date: the general key, not the earlier Azure-only one.
        (KMS_SERVER_2025, 4918, "Windows Server 2025"),
        (KMS_OFFICE_2013, 206, "Office 2013 VL"),
        (KMS_OFFICE_2024, 206, "Office LTSC 2024"),
        (KMS_WIN7, 206, "Windows 10 2019"),
    ],
)
def test_csvlk_for_known_products(
    catalog: Catalog, kms_id: uuid.UUID, group: int, name: str
) -> None:
    csvlk = catalog.csvlk_for_kms_id(kms_id)
    assert (csvlk.group_id, csvlk.name) == (group, name)


def test_csvlk_choice_follows_the_documented_rule(catalog: Catalog) -> None:
    for kms in catalog.kms_ids:
        chosen = catalog.csvlk_for_kms_id(kms.id)
        assert not chosen.is_lab and not chosen.is_preview
        covering = [
            c
            for c in catalog.csvlks
            if kms.id in c.activates_kms_ids and not c.is_lab and not c.is_preview
        ]
        if covering:
            assert chosen in covering
            assert chosen.release_date == max(c.release_date for c in covering)
        else:
            # Known but uncovered: the application's fallback, of the same application.
            assert any(
                (k := catalog.kms_id(i)) is not None and k.application_id == kms.application_id
                for i in chosen.activates_kms_ids
            )


def _tiny_catalog(csvlks: list[Csvlk]) -> Catalog:
    app = Application(id=WINDOWS, name="Windows", min_active_clients=50)
    client = KmsId(U(int=1), "Client", WINDOWS, 6, 25, is_retail=False, is_preview=False)
    server = KmsId(U(int=2), "Server", WINDOWS, 6, 5, is_retail=False, is_preview=False)
    return Catalog(
        applications=[app],
        kms_ids=[client, server],
        skus=[],
        csvlks=csvlks,
        host_builds=[],
    )


def _csvlk(
    name: str, year: int, *, lab: bool = False, preview: bool = False, ids: int = 1
) -> Csvlk:
    return Csvlk(
        id=None,
        name=name,
        group_id=206,
        min_key_id=0,
        max_key_id=1000,
        release_date=datetime.date(year, 1, 1),
        is_lab=lab,
        is_preview=preview,
        activates_kms_ids=frozenset(U(int=i) for i in range(1, ids + 1)),
    )


def test_csvlk_rule_skips_lab_and_preview_keys_and_prefers_newest() -> None:
    cat = _tiny_catalog(
        [
            _csvlk("old", 2010),
            _csvlk("new", 2015),
            _csvlk("lab", 2020, lab=True),
            _csvlk("preview", 2021, preview=True),
        ]
    )
    assert cat.csvlk_for_kms_id(U(int=1)).name == "new"
    # Server id 2 is covered by nothing: it gets the client's key, as do unknown ids.
    assert cat.csvlk_for_kms_id(U(int=2)).name == "new"
    assert cat.csvlk_for_kms_id(U(int=99)).name == "new"


def test_csvlk_rule_breaks_date_ties_by_coverage() -> None:
    cat = _tiny_catalog([_csvlk("narrow", 2015), _csvlk("broad", 2015, ids=2)])
    assert cat.csvlk_for_kms_id(U(int=1)).name == "broad"


def test_csvlk_without_any_usable_key_raises() -> None:
    cat = _tiny_catalog([_csvlk("lab", 2020, lab=True)])
    with pytest.raises(LookupError):
        cat.csvlk_for_kms_id(U(int=1))


def test_vlmcsd_table(catalog: Catalog) -> None:
    office = catalog.vlmcsd_csvlk_for_kms_id(KMS_OFFICE_2010)
    assert office.index == 1 and office.group_id == 96
    assert office.default_epid == "03612-00096-199-799188-03-1033-17763.0000-2972018"
    assert KMS_OFFICE_2010 in office.used_for_kms_ids
    # vlmcsd uses record 0 for ids it does not know (Office 2021 is one of them).
    assert catalog.vlmcsd_csvlk_for_kms_id(U(int=3)).index == 0
    assert catalog.vlmcsd_csvlk_for_kms_id(U("86d50b16-4808-41af-b83b-b338274318b2")).index == 0
    for record in catalog.vlmcsd_csvlks:
        key_id = int(record.default_epid[12:15]) * 1_000_000 + int(record.default_epid[16:22])
        assert record.min_key_id <= key_id <= record.max_key_id
        assert int(record.default_epid[6:11]) == record.group_id


def test_host_builds_and_platform_ids(catalog: Catalog) -> None:
    build = catalog.host_build(17763)
    assert build is not None and build.platform_id == 3612 and build.uses_ndr64
    assert catalog.host_build(17764) is None
    assert catalog.platform_id_for_build(7601) == 55041
    assert catalog.platform_id_for_build(9200) == 5426
    assert catalog.platform_id_for_build(9650) == 6401
    assert catalog.platform_id_for_build(26100) == 3612
    with pytest.raises(LookupError):
        catalog.platform_id_for_build(100)


# --- resolve_product, search, product_name ---------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "2de67392-b7a7-462a-b1ca-108dd189f588",
        "{2DE67392-B7A7-462A-B1CA-108DD189F588}",
        "Windows 10/11 Pro",
        "  windows 10/11 PRO ",
        "w269n-wfgwx-yvc9b-4j6c9-t83gx",
    ],
)
def test_resolve_product_exact(catalog: Catalog, spec: str) -> None:
    assert catalog.resolve_product(spec).id == SKU_WIN_PRO


def test_resolve_product_unique_substring_and_glob(catalog: Catalog) -> None:
    assert (
        catalog.resolve_product("plus 2019 preview").name == "Office Professional Plus 2019 Preview"
    )
    assert (
        catalog.resolve_product("*Professional Plus 2010").name == "Office Professional Plus 2010"
    )
    assert catalog.resolve_product("windows server 2019 d*(semi*").id == U(
        "90c362e5-0da1-4bfd-b53b-b87d309ade43"
    )


def test_resolve_product_ambiguous_lists_candidates(catalog: Catalog) -> None:
    with pytest.raises(LookupError) as info:
        catalog.resolve_product("server 2019 datacenter")
    message = str(info.value)
    assert "ambiguous" in message
    assert "Windows Server 2019 Datacenter (34e1ae55" in message
    assert "Windows Server 2019 Datacenter (Semi-Annual Channel)" in message


def test_resolve_product_ambiguous_listing_is_capped(catalog: Catalog) -> None:
    with pytest.raises(LookupError, match=r"\d+ SKUs match") as info:
        catalog.resolve_product("windows*")
    assert "more" in str(info.value)
    assert str(info.value).count("\n") <= 12


def test_resolve_product_unknown_suggests_close_names(catalog: Catalog) -> None:
    with pytest.raises(LookupError, match="unknown product 'Windos 10/11 Pro'") as info:
        catalog.resolve_product("Windos 10/11 Pro")
    assert "Windows 10/11 Pro (2de67392" in str(info.value)
    with pytest.raises(LookupError, match="unknown product"):
        catalog.resolve_product("no such product at all")
    with pytest.raises(LookupError, match="empty"):
        catalog.resolve_product("   ")


def test_resolve_product_guid_errors(catalog: Catalog) -> None:
    with pytest.raises(LookupError, match="unknown SKU id"):
        catalog.resolve_product(str(U(int=12345)))
    with pytest.raises(LookupError, match="is the KMS id of 'Windows Server 2019'") as info:
        catalog.resolve_product(str(KMS_SERVER_2019))
    assert "Windows Server 2019 Datacenter" in str(info.value)


def test_search(catalog: Catalog) -> None:
    assert [s.id for s in catalog.search("w269n")] == [SKU_WIN_PRO]
    assert [s.id for s in catalog.search("2DE67392")] == [SKU_WIN_PRO]
    by_kms = catalog.search(str(KMS_SERVER_2019))
    assert {s.kms_id for s in by_kms} == {KMS_SERVER_2019}
    assert set(by_kms) == set(catalog.skus_for_kms_id(KMS_SERVER_2019))
    assert all("datacenter" in s.name.casefold() for s in catalog.search("DataCenter"))
    assert len(catalog.search("")) == 330
    assert catalog.search("no such thing") == []


def test_product_name(catalog: Catalog) -> None:
    stranger = U(int=42)
    assert catalog.product_name(SKU_SERVER_2019_DC, KMS_SERVER_2019) == (
        "Windows Server 2019 Datacenter"
    )
    assert catalog.product_name(stranger, KMS_SERVER_2019) == "Windows Server 2019"
    assert catalog.product_name(None, KMS_OFFICE_2010) == "Office 2010"
    assert catalog.product_name(stranger, U(int=43)) == f"unknown ({stranger})"
    assert catalog.product_name(None, stranger) == f"unknown ({stranger})"
    assert catalog.product_name(None, None) == "unknown"


# --- loader validation -----------------------------------------------------------------------


def test_loader_rejects_foreign_or_broken_data() -> None:
    doc = json.loads(SHIPPED.read_bytes())
    with pytest.raises(ValueError, match="schema"):
        Catalog.from_dict({**doc, "schema": "other/1"})
    with pytest.raises(ValueError, match="malformed"):
        Catalog.from_dict({k: v for k, v in doc.items() if k != "skus"})
    dup = copy.deepcopy(doc)
    dup["skus"].append(dup["skus"][0])
    with pytest.raises(ValueError, match="duplicate SKU id"):
        Catalog.from_dict(dup)
    dangling = copy.deepcopy(doc)
    dangling["csvlks"][0]["activates_kms_ids"] = [str(U(int=1))]
    with pytest.raises(ValueError, match="unknown KMS ids"):
        Catalog.from_dict(dangling)
    with pytest.raises(ValueError):
        Catalog.from_json(b"[]")
