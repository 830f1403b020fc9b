"""Regenerates packaging/man/kmsgate.1 from the settings model and commands (a test checks it)."""

from __future__ import annotations

import sys
from pathlib import Path

from kmsgate.cli.manpage import render_manpage

TARGET = Path(__file__).resolve().parent.parent / "packaging" / "man" / "kmsgate.1"


def main() -> int:
    text = render_manpage()
    if "--check" in sys.argv:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(f"{TARGET} is stale; run tools/gen_manpage.py", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
