"""What a peer's product file (py-kms XML, vlmcsd KMD) holds, in kmsgate's terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kmsgate.errors import KmsgateError


class ForeignFileError(KmsgateError, ValueError):
    """The file is not a product file of the named format; the message says where."""


@dataclass
class ForeignData:
    """Products read from a peer's file, in kmsgate's terms (ids as canonical strings)."""

    source: str
    applications: dict[str, dict[str, Any]] = field(default_factory=dict)
    kms_ids: dict[str, dict[str, Any]] = field(default_factory=dict)
    skus: dict[str, dict[str, Any]] = field(default_factory=dict)
    csvlks: list[dict[str, Any]] = field(default_factory=list)
    host_builds: dict[int, dict[str, Any]] = field(default_factory=dict)
