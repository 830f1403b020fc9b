"""Rewrites the HRESULT table in docs/troubleshooting.md from kmsgate.protocol.hresult.

A test keeps them in sync; `--check` only reports whether the doc is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kmsgate.protocol.hresult import markdown_table

TARGET = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
START, END = "<!-- hresult-table:start -->\n", "<!-- hresult-table:end -->"


def main() -> int:
    text = TARGET.read_text()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        print(f"{TARGET} has no {START.strip()} ... {END} markers", file=sys.stderr)
        return 1
    updated = head + START + markdown_table() + END + tail
    if "--check" in sys.argv:
        if updated != text:
            print(f"{TARGET} is stale; run tools/gen_hresult_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(updated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
