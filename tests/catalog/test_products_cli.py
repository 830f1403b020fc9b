"""`kmsgate products`: table, --search and --json output, exit codes."""

from __future__ import annotations

import json
import uuid

import pytest
import typer
from typer.testing import CliRunner

from kmsgate.catalog import default_catalog
from kmsgate.cli import products

FIELDS = {
    "id",
    "name",
    "kms_id",
    "kms_id_name",
    "application_id",
    "application_name",
    "gvlk",
    "gvlk_is_generated",
    "default_protocol",
    "n_count_policy",
    "is_retail",
    "is_preview",
}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Stand-in for the kmsgate root command, so `products` is a subcommand."""

    app.add_typer(products.app)
    return app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_table_lists_every_product(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["products"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "330 KMS products" in out
    assert "Windows Server 2019 Datacenter" in out
    assert "34e1ae55-27f8-4950-8877-7a03be5fb181" in out
    assert "WMDGN-G9PQG-XVVXX-R3X43-63DFG" in out
    assert "v6" in out and "v4" in out
    # Sorted by application, then name: Office 14 (2010) < Office 2013+ < Windows.
    assert out.index("Office Professional Plus 2010") < out.index("Office Professional Plus 2013")
    assert out.index("Office Professional Plus 2019") < out.index("Windows 7 Professional")
    assert out.index("Windows 7 Professional") < out.index("Windows Server 2019 Datacenter")


def test_search_filters_the_table(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["products", "--search", "server 2019 datacenter"])
    assert result.exit_code == 0, result.output
    assert "2 KMS products matching 'server 2019 datacenter'" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "34e1ae55" in line)
    assert "Windows Server 2019" in row and "v6" in row and " 5 " in row
    assert "Windows 7" not in result.stdout


def test_json_has_all_fields(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["products", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert isinstance(records, list) and len(records) == len(default_catalog().skus) == 330
    assert all(set(r) == FIELDS for r in records)
    assert [(r["application_name"].casefold(), r["name"].casefold()) for r in records] == sorted(
        (r["application_name"].casefold(), r["name"].casefold()) for r in records
    )
    pro = next(r for r in records if r["name"] == "Windows 10/11 Pro")
    assert pro == {
        "id": "2de67392-b7a7-462a-b1ca-108dd189f588",
        "name": "Windows 10/11 Pro",
        "kms_id": "58e2134f-8e11-4d17-9cb2-91069c151148",
        "kms_id_name": "Windows 10/11 2015 (Volume)",
        "application_id": "55c92734-d682-4d71-983e-d6ec3f16059f",
        "application_name": "Windows",
        "gvlk": "W269N-WFGWX-YVC9B-4J6C9-T83GX",
        "gvlk_is_generated": False,
        "default_protocol": 6,
        "n_count_policy": 25,
        "is_retail": False,
        "is_preview": False,
    }
    for r in records:
        uuid.UUID(r["id"])
        uuid.UUID(r["kms_id"])


def test_json_with_search(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["products", "--json", "-s", "w269n"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)] == ["Windows 10/11 Pro"]


def test_search_without_match_exits_1_with_a_message(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["products", "--search", "no such product"])
    assert result.exit_code == 1
    assert "No product matches 'no such product'" in result.stderr
    assert "KMS products" not in result.stdout


def test_json_search_without_match_prints_empty_array(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["products", "--json", "--search", "zzzz"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == []
    assert "No product matches 'zzzz'" in result.stderr
