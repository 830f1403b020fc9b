"""HRESULT and NCA texts of the protocol core, as logs, the CLI and the docs table show them."""

from __future__ import annotations

import re

import pytest

from kmsgate.protocol import hresult
from kmsgate.protocol.hresult import (
    KMS_HRESULTS,
    NCA_DESCRIPTIONS,
    HResult,
    HResultInfo,
    describe,
    explain,
    markdown_table,
)


def test_success_reads_as_success() -> None:
    assert describe(HResult.S_OK) == "0x00000000 (success)"
    assert describe(0) == "0x00000000 (success)"


@pytest.mark.parametrize("info", KMS_HRESULTS, ids=lambda i: i.code.name)
def test_known_codes_read_as_their_summary(info: HResultInfo) -> None:
    code = int(info.code)
    assert explain(code) is info
    if code != HResult.S_OK:
        assert describe(code) == f"0x{code:08X} ({info.summary})"


@pytest.mark.parametrize(("status", "text"), sorted(NCA_DESCRIPTIONS.items()))
def test_nca_statuses_read_as_their_description(status: int, text: str) -> None:
    assert explain(status) is None
    assert describe(status) == f"0x{status:08X} ({text})"


def test_nca_unk_if_text() -> None:
    assert describe(0x1C010003) == (
        "0x1C010003 (nca_unk_if: unknown interface or presentation context)"
    )


@pytest.mark.parametrize("code", [0x12345678, 0xC004F999, 1])
def test_unknown_codes_read_as_bare_hex(code: int) -> None:
    assert explain(code) is None
    assert describe(code) == f"0x{code:08X}"


def _cells(row: str) -> list[str]:
    """Split a Markdown row on its unescaped pipes."""
    assert row.startswith("| ") and row.endswith(" |")
    return [cell.replace("\\|", "|") for cell in re.split(r" (?<!\\)\| ", row[2:-2])]


def test_markdown_table_has_one_row_per_code() -> None:
    table = markdown_table()
    assert table.endswith(" |\n") and not table.endswith("\n\n")
    header, rule, *rows = table.removesuffix("\n").split("\n")
    assert header == "| code | meaning | cause | fix | from |"
    assert rule == "| --- | --- | --- | --- | --- |"
    assert len(rows) == len(KMS_HRESULTS)
    for row, info in zip(rows, KMS_HRESULTS, strict=True):
        assert _cells(row) == [
            f"`{info.hex}`",
            info.summary,
            info.cause,
            info.fix,
            "host" if info.sent_by_host else "client",
        ]
    senders = {_cells(row)[4] for row in rows}
    assert senders == {"host", "client"}


def test_markdown_table_escapes_pipes_inside_a_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    info = HResultInfo(HResult.ACCESS_DENIED, "a | b", "cause", "run a|b", sent_by_host=False)
    monkeypatch.setattr(hresult, "KMS_HRESULTS", (info,))
    row = markdown_table().split("\n")[2]
    assert row == "| `0x80070005` | a \\| b | cause | run a\\|b | client |"
    assert _cells(row) == ["`0x80070005`", "a | b", "cause", "run a|b", "client"]
