"""Product families are catalogue facts: stored in products.json, read by metrics and the store.

The family is a Prometheus label value and a stored column: moving its computation from the
metrics module into the catalogue must not shift one value.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from kmsgate.catalog import Catalog, default_catalog
from kmsgate.catalog.families import UNKNOWN_FAMILY, family_label
from kmsgate.catalog.interchange import load_document, merge
from kmsgate.catalog.loading import catalog_from_dict
from kmsgate.catalog.pykms_xml import read_pykms_xml
from kmsgate.net import Peer
from kmsgate.observability.metrics import Metrics, product_family, product_family_label
from tests.catalog.peer_formats import pykms_xml
from tests.catalog.test_import import FUTURE, TODAY
from tests.observability import make_request, served

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "kmsgate" / "catalog" / "products.json"


# The rule as observability/metrics.py applied it at run time before families were stored
# (commit 57a9463), kept verbatim as the reference the stored values must reproduce.
_SERVER_WORD = re.compile(r"\bServer\b")
_OFFICE_YEAR = re.compile(r"\b(20\d\d)\b")


def _old_family_of(app_name: str, kms_name: str, sku_name: str = "") -> str:
    if app_name.startswith("Office"):
        year = _OFFICE_YEAR.search(kms_name)
        return f"office-{year.group(1)}" if year else "office"
    if app_name.startswith("Windows"):
        if _SERVER_WORD.search(kms_name) or sku_name.startswith("Windows Server "):
            return "windows-server"
        return "windows"
    return "unknown"


def _old_index(catalog: Catalog) -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, str]]:
    apps = {app.id: app.name for app in catalog.applications}
    by_kms = {
        kms.id: _old_family_of(apps.get(kms.application_id, ""), kms.name)
        for kms in catalog.kms_ids
    }
    by_sku = {}
    for sku in catalog.skus:
        kms = catalog.kms_id(sku.kms_id)
        kms_name = kms.name if kms is not None else ""
        by_sku[sku.id] = _old_family_of(apps.get(sku.application_id, ""), kms_name, sku.name)
    return by_sku, by_kms


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return default_catalog()


def test_every_stored_family_is_the_one_the_old_rule_gave(catalog: Catalog) -> None:
    by_sku, by_kms = _old_index(catalog)
    assert {sku.id: sku.family for sku in catalog.skus} == by_sku
    assert {kms.id: kms.family for kms in catalog.kms_ids} == by_kms
    # The rule has something to tell apart: servers, clients, Office by year.
    assert {"windows", "windows-server", "office-2016", "office-2024"} <= set(by_sku.values())


def test_metric_label_and_stored_label_are_unchanged_for_every_request(catalog: Catalog) -> None:
    by_sku, by_kms = _old_index(catalog)
    stranger = uuid.UUID(int=7)
    metrics = Metrics(catalog)
    for sku in catalog.skus:
        # The request's KMS id may be another than the SKU's own: the SKU decides.
        for kms_id in (sku.kms_id, stranger):
            request = make_request(sku_id=sku.id, kms_id=kms_id)
            assert product_family(catalog, request) == by_sku[sku.id]
            assert product_family_label(catalog, request) == family_label(by_sku[sku.id])
    for kms in catalog.kms_ids:
        request = make_request(sku_id=stranger, kms_id=kms.id)
        assert product_family(catalog, request) == by_kms[kms.id]
    unknown = make_request(sku_id=stranger, kms_id=stranger)
    assert product_family(catalog, unknown) == UNKNOWN_FAMILY == "unknown"
    assert product_family_label(catalog, None) == "Unknown"
    # The hot path of the counters reads the same values.
    for sku in catalog.skus[:40]:
        metrics.hook(Peer("10.0.0.1", 1), served(make_request(sku_id=sku.id, kms_id=sku.kms_id)))
    labels = {
        sample.labels["family"]
        for family in metrics.registry.collect()
        if family.name == "kmsgate_activations"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert labels == {by_sku[sku.id] for sku in catalog.skus[:40]}


@pytest.mark.parametrize(
    ("family", "label"),
    [
        ("windows", "Windows"),
        ("windows-server", "Windows Server"),
        ("office", "Office"),
        ("office-2010", "Office 2010"),
        ("unknown", "Unknown"),
    ],
)
def test_family_label(family: str, label: str) -> None:
    assert family_label(family) == label


def test_a_catalogue_file_without_families_gets_them_by_the_same_rule(catalog: Catalog) -> None:
    doc: dict[str, Any] = json.loads(SHIPPED.read_text(encoding="ascii"))
    bare = copy.deepcopy(doc)
    for record in (*bare["kms_ids"], *bare["skus"]):
        del record["family"]
    old = catalog_from_dict(bare)
    assert [s.family for s in old.skus] == [s.family for s in catalog.skus]
    assert [k.family for k in old.kms_ids] == [k.family for k in catalog.kms_ids]
    assert "family" not in bare["skus"][0]  # the caller's document is left alone


def test_an_imported_product_is_stored_with_its_family() -> None:
    foreign_doc = pykms_xml(default_catalog(), extra_kms=[FUTURE])
    doc, _ = merge(load_document(None), read_pykms_xml(foreign_doc), today=TODAY)
    [kms] = [k for k in doc["kms_ids"] if k["id"] == FUTURE["id"]]
    [sku] = [s for s in doc["skus"] if s["id"] == FUTURE["sku"]]
    assert (kms["family"], sku["family"]) == ("windows-server", "windows-server")
    merged = catalog_from_dict(doc)
    request = make_request(sku_id=uuid.UUID(FUTURE["sku"]), kms_id=uuid.UUID(FUTURE["id"]))
    assert product_family(merged, request) == "windows-server"
