"""The shared "safe to show" helper and the CSV cell rules."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup
from rich.console import Console

from kmsgate.access.audit_csv import csv_cell, formula_like
from kmsgate.observability.display import json_text, rich_cell, shown, template_value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PC-42.corp.example", "PC-42.corp.example"),
        ("Ünïcødé 名前 🙂", "Ünïcødé 名前 🙂"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("a\x9bb\x7f", "a\\x9bb\\x7f"),
        ("x\u2028y\u2029z", "x\\u2028y\\u2029z"),
        ("\u202aa\u202bb\u202cc\u202dd\u202ee", "\\u202aa\\u202bb\\u202cc\\u202dd\\u202ee"),
        ("\u2066a\u2067b\u2068c\u2069", "\\u2066a\\u2067b\\u2068c\\u2069"),
        ("\u200e\u200f\u061c\ufeff", "\\u200e\\u200f\\u061c\\ufeff"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("no\u00a0break", "no\u00a0break"),  # a visible space stays
    ],
)
def test_shown_escapes_what_would_not_be_seen_as_it_is(raw: str, expected: str) -> None:
    assert shown(raw) == expected


HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}


@given(st.text())
def test_shown_leaves_nothing_hidden_and_touches_nothing_else(text: str) -> None:
    out = shown(text)
    assert not any(unicodedata.category(c) in HIDDEN for c in out)
    if not any(unicodedata.category(c) in HIDDEN for c in text):
        assert out == text


def test_rich_cells_are_text_not_markup() -> None:
    console = Console(width=80, record=True, color_system=None)
    console.print(rich_cell("[/bold]x [red]y[/red] :smiley:"))
    assert console.export_text().strip() == "[/bold]x [red]y[/red] :smiley:"
    assert rich_cell(None).plain == ""


def test_json_text_escapes_everything_non_ascii_and_round_trips() -> None:
    value = {"name": "a\u202eb\x1b\u2028c é"}
    text = json_text(value)
    assert text.isascii()
    assert json.loads(text) == value


def test_templates_escape_plain_strings_but_not_markup() -> None:
    assert template_value("a\u202eb") == "a\\u202eb"
    assert template_value(Markup("<b>\u202e</b>")) == Markup("<b>\u202e</b>")
    assert template_value(42) == 42


@pytest.mark.parametrize(
    ("raw", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("\n=1", "'\n=1"),
        (" =1", "' =1"),
        ("\x00=1", "'\\x00=1"),
        ("a\x00b", "a\\x00b"),
        ("＝1", "'＝1"),
        ("＋1", "'＋1"),
        ("－1", "'－1"),
        ("＠A1", "'＠A1"),
        ("﹢1", "'﹢1"),
        ("\u3000=1", "'\u3000=1"),
        ("plain = text", "plain = text"),
        ("", ""),
    ],
)
def test_csv_cells_neutralise_formulas_and_leading_blanks(raw: str, cell: str) -> None:
    assert csv_cell(raw) == cell
    assert formula_like(raw) == cell.startswith("'")
