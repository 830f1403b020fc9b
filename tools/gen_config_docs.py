"""Regenerates docs/configuration.md from the settings model (a test keeps them in sync)."""

from __future__ import annotations

import sys
from pathlib import Path

from kmsgate.config.reference import settings_reference

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def main() -> int:
    text = settings_reference()
    if "--check" in sys.argv:
        if TARGET.read_text() != text:
            print(f"{TARGET} is stale; run tools/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
