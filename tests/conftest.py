"""Suite-wide setup: nothing a test starts may write into the real data directory."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
from hypothesis import settings

# No per-example deadline anywhere: properties are about results, and a deadline is a timing
# assertion that a loaded CI machine breaks (a fold test once took 359 ms against 200).
settings.register_profile("kmsgate", deadline=None)
settings.load_profile("kmsgate")

# Hosts save their identity (ePIDs, HWID) in the data directory; tests that do not choose one
# share a scratch directory instead of /var/lib/kmsgate or ~/.local/share/kmsgate. Set at
# import time so that subprocesses (`kmsgate serve`) inherit it too.
if "KMSGATE_DATA_DIR" not in os.environ:
    os.environ["KMSGATE_DATA_DIR"] = tempfile.mkdtemp(prefix="kmsgate-test-data-")
    atexit.register(shutil.rmtree, os.environ["KMSGATE_DATA_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A slow test is left out of the fast suite too: `-m "not integration"` skips it."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
