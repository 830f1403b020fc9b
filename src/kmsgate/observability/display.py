"""Make a stored string safe to show: in a terminal (Rich), a web page or a JSON dump.

Machine names, user names and audit details come from clients and failed logins. Shown raw,
they could move the cursor, retitle or clear a terminal (ESC, C1 controls), reorder the text
around them (bidi overrides and isolates), split a table row (U+2028, U+2029, LF) or hide
text (zero-width characters). `shown()` replaces every such character by a visible escape
(`\\x1b`, `\\u202e`), so what an administrator reads is what was stored, byte for byte.
"""

from __future__ import annotations

import json
import unicodedata
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

if TYPE_CHECKING:
    from rich.text import Text

__all__ = ["json_text", "rich_cell", "shown", "template_value"]

# Control (Cc), format (Cf: bidi marks, zero-width, BOM, tags), surrogate (Cs), line and
# paragraph separator (Zl, Zp) characters: none of them is meant to be seen as it stands.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(text: str) -> str:
    """text with control, format, bidi and separator characters written as escapes."""
    # isprintable() is False for every hidden category (and for a few harmless spaces such
    # as U+00A0), so ordinary names take this fast path.
    if text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _HIDDEN_CATEGORIES else c for c in text)


def rich_cell(value: object) -> Text:
    """A Rich table cell showing value literally: no markup, no emoji codes, no controls."""
    # Imported here: the web pages use this module too, and Rich costs a serving node 1 MiB.
    from rich.text import Text

    return Text("" if value is None else shown(str(value)))


def json_text(value: Any) -> str:
    """Indented JSON with every non-ASCII character escaped, safe to print to a terminal."""
    # ensure_ascii turns C1 controls, bidi marks and U+2028 into \\uXXXX; JSON itself already
    # escapes the C0 controls. Any JSON reader gets the exact strings back.
    return json.dumps(value, indent=2, default=str, ensure_ascii=True)


def template_value(value: object) -> object:
    """Jinja2 `finalize` hook: every plain string a template prints goes through shown().

    Markup (HTML the application built and marked safe) is left as it is.
    """
    if isinstance(value, str) and not isinstance(value, Markup):
        return shown(value)
    return value
