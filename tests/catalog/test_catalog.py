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
    GenuineHost,
    HostBuild,
    KmsId,
    Sku,
    default_catalog,
)
from kmsgate.catalog.loading import catalog_from_dict, catalog_from_json

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "tools" / "build_catalog.py"
SOURCE = REPO / "data" / "kms-products.json"
SHIPPED = Path(kmsgate.catalog.__file__).with_name("products.json")
GVLK_RE = re.compile(r"^[BCDFGHJKMNPQRTVWXY2346789]{5}(-[BCDFGHJKMNPQRTVWXY2346789]{5}){4}$")

U = uuid.UUID
WINDOWS = U("55c92734-d682-4d71-983e-d6ec3f16059f")
OFFICE_2010_APP = U("59a52881-a989-479d-af46-f275c6370663")
OFFICE_APP = U("0ff1ce15-a989-479d-af46-f275c6370663")
KMS_WIN10 = U("58e2134f-8e11-4d17-9cb2-91069c151148")
KMS_WIN7 = U("7fde5219-fbfa-484a-82c9-34d1ad53e856")
KMS_SERVER_2019 = U("8449b1fb-f0ea-497a-99ab-66ca96e9a0f5")
KMS_SERVER_2022 = U("b74263e4-0f92-46c6-bcf8-c11d5efe2959")
KMS_SERVER_2025 = U("907f1f65-adcd-4a2e-95bc-4bf500bc6e58")
KMS_SERVER_2025_PLACEHOLDER = U("4b83307d-7788-50ff-8d1f-1861915bdb9d")
KMS_LTSC_2021 = U("3b576817-7b75-4362-9e13-223f2d9e9c97")
KMS_LTSC_2024 = U("e85ee727-69c4-4528-99d2-216b0f065e38")
KMS_OFFICE_2010 = U("e85af946-2e25-47b7-83e1-bebcebeac611")
KMS_OFFICE_2013 = U("e6a6f1bf-9d40-40c3-aa9f-c77ba21578c0")
KMS_OFFICE_2019 = U("617d9eb1-ef36-4f82-86e0-a65ae07b96c6")
KMS_OFFICE_2024 = U("a8973cb5-bf03-0a4c-9cef-703099645ab3")
KMS_OFFICE_2024_PLACEHOLDER = U("1b4db7eb-4057-5ddf-91e0-36dec72071f5")
CSVLK_SERVER_2025 = U("84e331f6-4279-48c4-ab10-b75139181351")
CSVLK_OFFICE_2024 = U("f3d89bbf-c0ec-47ce-a8fa-e5a5f97e447f")
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
    # Vendored in the repository: a missing file is a failure, never a skip.
    doc: dict[str, Any] = json.loads(SOURCE.read_bytes())
    return doc


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return default_catalog()


# --- the shipped file and its builder -------------------------------------------------------


def test_shipped_file_is_exactly_the_builder_output(builder: ModuleType) -> None:
    assert builder.build_from_file(SOURCE) == SHIPPED.read_text(encoding="ascii"), (
        "src/kmsgate/catalog/products.json is stale: run tools/build_catalog.py"
    )


def test_builder_check_mode_detects_a_stale_file(builder: ModuleType, tmp_path: Path) -> None:
    assert builder.main([str(SOURCE), "--output", str(SHIPPED), "--check"]) == 0
    stale = tmp_path / "products.json"
    stale.write_text(SHIPPED.read_text(encoding="ascii").replace("Windows", "Windoze", 1))
    assert builder.main([str(SOURCE), "--output", str(stale), "--check"]) == 1


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
        ("csvlks", "Office LTSC 2021", "max_key_id", 1, "lies in no key_id_blocks block"),
        # Without blocks the key cannot be held, yet the genuine-host model holds it.
        ("csvlks", "Office LTSC 2021", "key_id_blocks", [], "is not a usable CSVLK record"),
        ("csvlks", "Office LTSC 2021", "host_key_family", "Office 2021", "host_key_family"),
        (
            "csvlks",
            "Windows Server 2022",
            "key_id_blocks",
            [{"start": 0, "end": 20000}, {"start": 20000, "end": 20029999}],
            "blocks overlap",
        ),
        (
            "csvlks",
            "Windows Server 2025",
            "activates_superseded_kms_ids",
            ["0fc6ccaf-ff0e-4fae-9d08-4370785bf7ed"],
            "activates_superseded_kms_ids",
        ),
        (
            "kms_ids",
            "Windows Server 2025 [py-kms placeholder id, superseded]",
            "superseded_by",
            str(uuid.UUID(int=11)),
            "is not a KMS id",
        ),
        (
            "kms_ids",
            "Windows Server 2025 [py-kms placeholder id, superseded]",
            "superseded_by",
            "a8973cb5-bf03-0a4c-9cef-703099645ab3",
            "another application",
        ),
        (
            "kms_ids",
            "Windows 7",
            "superseded_by",
            "907f1f65-adcd-4a2e-95bc-4bf500bc6e58",
            "from a placeholder",
        ),
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


def test_builder_rejects_unused_fixes_and_wrong_counts(
    builder: ModuleType, source_doc: dict[str, Any]
) -> None:
    doc = copy.deepcopy(source_doc)
    _mutate(doc, "csvlks", "Windows Server 2012", "release_date", "2012-10-26")
    doc["counts"]["skus"] = 331
    with pytest.raises(builder.BuildError) as info:
        builder.build(doc, "0" * 64)
    assert "no longer needed" in str(info.value)
    assert "counts" in str(info.value)


def test_shipped_file_layout_is_sorted_and_compact() -> None:
    text = SHIPPED.read_text(encoding="ascii")
    doc = json.loads(text)
    assert doc["schema"] == "kmsgate-catalog/2"
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
    assert len(text) < 200_000


def test_provenance_records_source_and_dropped_records(catalog: Catalog) -> None:
    prov = catalog.provenance
    assert prov["source"]["schema"] == "kms-products/2"
    assert re.fullmatch(r"[0-9a-f]{64}", prov["source"]["sha256"])
    assert {"pykms", "vlmcsd", "pykms-legacy", "kmsrsos-pkeyconfig"} <= set(prov["data_sets"])
    assert len(prov["dropped"]["skus_without_id"]) == 10
    assert len(prov["dropped"]["csvlks_without_epid_data"]) == 15
    assert len(catalog.csvlks) + 15 == prov["source_counts"]["csvlks"]
    assert prov["source_changes_from_1"] == 55


# --- counts, types and integrity -------------------------------------------------------------


def test_default_catalog_is_loaded_once(catalog: Catalog) -> None:
    assert default_catalog() is catalog


def test_counts(catalog: Catalog) -> None:
    assert len(catalog.applications) == 3
    assert len(catalog.kms_ids) == 49
    assert len(catalog.skus) == 330
    assert sum(1 for s in catalog.skus if s.gvlk) == 284
    assert len(catalog.csvlks) == 45
    assert sum(1 for k in catalog.kms_ids if k.in_microsoft_list) == 28
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
        assert csvlk.key_id_blocks == tuple(sorted(csvlk.key_id_blocks))
        assert all(0 <= start <= end <= 999_999_999 for start, end in csvlk.key_id_blocks)
        assert csvlk.host_key_family.startswith(("windows-", "office-"))
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
    assert len(placeholders) == 13
    # The legacy 01000000-... previews, and py-kms's two ids Microsoft's own replaced.
    assert {k.id for k in placeholders if not k.is_preview} == {
        KMS_SERVER_2025_PLACEHOLDER,
        KMS_OFFICE_2024_PLACEHOLDER,
    }
    retail = catalog.kms_id(U("e1c51358-fe3e-4203-a4a2-3b6b20c9734e"))
    assert retail is not None and retail.is_retail


# --- /2 facts: genuine ids, aliases, corrected CSVLKs, the genuine-host model ----------------


@pytest.mark.parametrize(
    ("kms_id", "name", "app_id", "n_count", "skus"),
    [
        (KMS_SERVER_2025, "Windows Server 2025", WINDOWS, 5, 4),
        (KMS_OFFICE_2024, "Office LTSC 2024", OFFICE_APP, 5, 15),
        (KMS_LTSC_2021, "Windows 10/11 2021 LTSC (Volume)", WINDOWS, 25, 2),
        (KMS_LTSC_2024, "Windows 10/11 2024 LTSC (Volume)", WINDOWS, 25, 2),
    ],
)
def test_microsofts_own_ids_are_known_products_with_skus(
    catalog: Catalog, kms_id: uuid.UUID, name: str, app_id: uuid.UUID, n_count: int, skus: int
) -> None:
    kms = catalog.kms_id(kms_id)
    assert kms is not None
    assert (kms.name, kms.application_id, kms.n_count_policy) == (name, app_id, n_count)
    assert kms.in_microsoft_list is True and not kms.is_placeholder and kms.superseded_by is None
    assert catalog.genuine_kms_id(kms_id) == kms_id
    assert len(catalog.skus_for_kms_id(kms_id)) == skus
    assert all(s.application_id == app_id for s in catalog.skus_for_kms_id(kms_id))


@pytest.mark.parametrize(
    ("placeholder", "genuine"),
    [
        (KMS_SERVER_2025_PLACEHOLDER, KMS_SERVER_2025),
        (KMS_OFFICE_2024_PLACEHOLDER, KMS_OFFICE_2024),
    ],
)
def test_superseded_placeholders_are_aliases_of_the_genuine_ids(
    catalog: Catalog, placeholder: uuid.UUID, genuine: uuid.UUID
) -> None:
    kms = catalog.kms_id(placeholder)
    assert kms is not None and kms.is_placeholder and kms.superseded_by == genuine
    assert kms.in_microsoft_list is False
    assert catalog.genuine_kms_id(placeholder) == genuine
    # The SKUs now name the genuine id; the placeholder keeps none of its own.
    assert catalog.skus_for_kms_id(placeholder) == ()


def test_ltsc_skus_are_counted_under_each_releases_id(catalog: Catalog) -> None:
    sku = catalog.resolve_product("Windows 10 Enterprise LTSC 2019/2021")
    assert [(r.build, r.kms_id) for r in sku.kms_id_by_release] == [
        (17763, U("11b15659-e603-4cf1-9c1f-f0ec01b81888")),
        (19044, KMS_LTSC_2021),
        (26100, KMS_LTSC_2024),
    ]
    assert [r.verified for r in sku.kms_id_by_release] == [True, False, False]
    assert sku in catalog.skus_for_kms_id(KMS_LTSC_2024)
    assert sku.kms_id == U("11b15659-e603-4cf1-9c1f-f0ec01b81888")


@pytest.mark.parametrize(
    ("csvlk_id", "group", "blocks", "family"),
    [
        (CSVLK_SERVER_2025, 4919, ((0, 19_999), (20_000, 20_019_999)), "windows-server-2025"),
        (U("82fcf64d-f9dd-4411-9c79-f2eed16d4eb8"), 4918, ((0, 49_999),), "windows-server-2025"),
        (CSVLK_OFFICE_2024, 206, ((591_000_000, 610_999_999),), "office-2024"),
        # Server 2022: 20000-29999 is a hole between two valid blocks.
        (
            U("661f7658-7035-4b4c-9f35-010682943ec2"),
            4573,
            ((0, 19_999), (30_000, 20_029_999)),
            "windows-server-2022",
        ),
        (
            U("ecc0774a-aed3-4e1a-b815-2b31781adfea"),
            3858,
            ((0, 14_999_999),),
            "windows-10-china-government",
        ),
    ],
)
def test_corrected_csvlks(
    catalog: Catalog,
    csvlk_id: uuid.UUID,
    group: int,
    blocks: tuple[tuple[int, int], ...],
    family: str,
) -> None:
    csvlk = catalog.csvlk(csvlk_id)
    assert csvlk is not None
    assert (csvlk.group_id, csvlk.key_id_blocks, csvlk.host_key_family) == (group, blocks, family)


def test_server_2022_key_id_hole(catalog: Catalog) -> None:
    csvlk = catalog.csvlk(U("661f7658-7035-4b4c-9f35-010682943ec2"))
    assert csvlk is not None
    assert csvlk.has_key_id(19_999) and csvlk.has_key_id(30_000)
    assert not csvlk.has_key_id(20_000) and not csvlk.has_key_id(29_999)


def test_server_2025_key_activates_microsofts_counted_id_list(catalog: Catalog) -> None:
    csvlk = catalog.csvlk(CSVLK_SERVER_2025)
    assert csvlk is not None
    assert len(csvlk.activates_kms_ids) == 23  # 22 from the licence + the superseded placeholder
    expected = {KMS_SERVER_2025, KMS_SERVER_2025_PLACEHOLDER, KMS_LTSC_2021, KMS_LTSC_2024,
                KMS_WIN10, KMS_WIN7, KMS_SERVER_2019, KMS_SERVER_2022}  # fmt: skip
    assert expected <= csvlk.activates_kms_ids
    apps = {kms.application_id for k in csvlk.activates_kms_ids if (kms := catalog.kms_id(k))}
    assert apps == {WINDOWS}


def test_every_microsoft_listed_id_is_covered_by_a_genuine_2025_host(catalog: Catalog) -> None:
    host = catalog.genuine_host(26100)
    assert host is not None and host.host_role == "server"
    assert host.windows_csvlk_id == CSVLK_SERVER_2025
    held = [catalog.csvlk(c) for c in (host.windows_csvlk_id, *host.office_csvlk_ids)]
    assert [c.host_key_family for c in held if c is not None] == [
        "windows-server-2025", "office-2010", "office-2013", "office-2016", "office-2019",
        "office-2021", "office-2024",
    ]  # fmt: skip
    covered = set().union(*(c.activates_kms_ids for c in held if c is not None))
    listed = {k.id for k in catalog.kms_ids if k.in_microsoft_list}
    assert len(listed) == 28
    # The rest are retail ids and Server RDSH: only lab and Azure-only host keys count them,
    # so a genuine host with the general Server 2025 key refuses them.
    rest = listed - covered
    assert {catalog.kms_id(k).name for k in rest} == {  # type: ignore[union-attr]
        "Windows 10 ServerRdsh (Volume)", "Windows 10/11 (Retail)", "Windows 8.1 (Retail)",
        "Windows 8 (Retail)",
    }  # fmt: skip
    for kms_id in rest:
        assert all(c.is_lab or c.is_azure_only or c.is_preview or "Pre-Release" in c.name
                   or c.host_key_family in ("windows-8", "windows-8.1")
                   for c in catalog.csvlks if kms_id in c.activates_kms_ids)  # fmt: skip


@pytest.mark.parametrize(
    ("build", "windows_family", "offices"),
    [
        (26100, "windows-server-2025", 6),
        (20348, "windows-server-2022", 6),
        (17763, "windows-server-2019", 5),
        (9200, "windows-server-2012", 4),
        (7601, "windows-server-2008-r2", 3),
        (19044, "windows-10-2019", 6),
    ],
)
def test_genuine_host_model_by_build(
    catalog: Catalog, build: int, windows_family: str, offices: int
) -> None:
    host = catalog.genuine_host(build)
    assert host is not None and host.windows_csvlk_id is not None
    windows = catalog.csvlk(host.windows_csvlk_id)
    assert windows is not None and windows.host_key_family == windows_family
    assert len(host.office_csvlk_ids) == offices
    assert all(catalog.csvlk(c).is_office for c in host.office_csvlk_ids)  # type: ignore[union-attr]


def test_builds_that_cannot_host_hold_nothing(catalog: Catalog) -> None:
    host = catalog.genuine_host(2600)
    assert host is not None and host.host_role == "none"
    assert host.windows_csvlk_id is None and host.office_csvlk_ids == ()
    assert catalog.genuine_host(12345) is None
    assert {b.build for b in catalog.host_builds} == {
        b.build for b in catalog.host_builds if catalog.genuine_host(b.build) is not None
    }


def test_catalog_refuses_a_model_naming_an_unknown_key() -> None:
    app = Application(id=WINDOWS, name="Windows", min_active_clients=50)
    with pytest.raises(ValueError, match="unknown CSVLK"):
        Catalog(
            applications=[app],
            kms_ids=[],
            skus=[],
            csvlks=[],
            host_builds=[],
            genuine_hosts=[GenuineHost(26100, "server", U(int=5), (), True)],
        )


def test_catalog_refuses_a_chained_alias() -> None:
    app = Application(id=WINDOWS, name="Windows", min_active_clients=50)
    first = KmsId(U(int=1), "a", WINDOWS, 6, 5, False, False, True, superseded_by=U(int=2))
    second = KmsId(U(int=2), "b", WINDOWS, 6, 5, False, False, True, superseded_by=U(int=3))
    third = KmsId(U(int=3), "c", WINDOWS, 6, 5, False, False)
    with pytest.raises(ValueError, match="superseded_by"):
        Catalog(applications=[app], kms_ids=[first, second, third], skus=[], csvlks=[],
                host_builds=[])  # fmt: skip


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


@pytest.mark.parametrize(
    ("number", "platform", "ndr64"),
    [(17763, 3612, True), (26100, 3612, True), (9600, 6401, True), (9200, 5426, True),
     (7601, 55041, False)],
)  # fmt: skip
def test_host_builds_and_platform_ids(
    catalog: Catalog, number: int, platform: int, ndr64: bool
) -> None:
    build = catalog.host_build(number)
    assert build is not None and (build.platform_id, build.uses_ndr64) == (platform, ndr64)
    assert catalog.host_build(number + 1 if number != 20348 else 1) is None


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


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("Windows 11 Pro", "Windows 10/11 Pro"),
        ("windows 10 pro n", "Windows 10/11 Pro N"),
        ("Server 2025 Datacenter", "Windows Server 2025 Datacenter"),
        ("server 2019 datacenter", "Windows Server 2019 Datacenter"),
        ("Server 2022 Standard", "Windows Server 2022 Standard"),
        ("Office LTSC 2024 Pro Plus", "Office LTSC Professional Plus 2024"),
        ("office 2019 proplus", "Office Professional Plus 2019"),
        ("Office Professional Plus 2019 preview", "Office Professional Plus 2019 Preview"),
        ("Windows 11 Enterprise", "Windows 10/11 Enterprise"),
        ("win 8.1 pro", "Windows 8.1 Professional"),
        ("Visio LTSC Pro 2024", "Office Visio LTSC Pro 2024"),
    ],
)
def test_resolve_product_by_the_words_admins_type(catalog: Catalog, spec: str, name: str) -> None:
    assert catalog.resolve_product(spec).name == name


def test_resolve_product_ambiguous_lists_candidates(catalog: Catalog) -> None:
    with pytest.raises(LookupError) as info:
        catalog.resolve_product("server datacenter")
    message = str(info.value)
    assert "ambiguous" in message
    assert "Windows Server 2019 Datacenter (34e1ae55" in message
    assert "Windows Server 2025 Datacenter (" in message


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
        catalog_from_dict({**doc, "schema": "other/1"})
    with pytest.raises(ValueError, match="malformed"):
        catalog_from_dict({k: v for k, v in doc.items() if k != "skus"})
    dup = copy.deepcopy(doc)
    dup["skus"].append(dup["skus"][0])
    with pytest.raises(ValueError, match="duplicate SKU id"):
        catalog_from_dict(dup)
    dangling = copy.deepcopy(doc)
    dangling["csvlks"][0]["activates_kms_ids"] = [str(U(int=1))]
    with pytest.raises(ValueError, match="unknown KMS ids"):
        catalog_from_dict(dangling)
    with pytest.raises(ValueError):
        catalog_from_json(b"[]")
