"""Modes of the files and folders kmsgate creates for its data: owner and group, never others.

The database holds the accounts' password hashes. The systemd unit's UMask=0027 says as much;
a shell's umask 022 must not open them to every local user.
"""

from __future__ import annotations

from typing import Final

PRIVATE_FOLDER: Final = 0o750
PRIVATE_FILE: Final = 0o640
