"""Opaque keyset cursors: base64url JSON naming the listing, its order and the boundary row."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from kmsgate.store.errors import InvalidCursor

Direction = Literal["next", "prev"]
KeyValue = str | int

MAX_CURSOR_CHARS = 2048
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: after (next) or before (prev) the row whose sort key is `key`."""

    listing: str  # "clients", "history" or "activations"
    order: str  # sort key name plus direction, e.g. "last_seen:desc"
    scope: str  # fingerprint of the filters the cursor was made under
    direction: Direction
    key: tuple[KeyValue, ...]


def scope_of(*parts: object) -> str:
    """Short fingerprint of a listing's filters: a cursor is only valid under the same ones."""
    digest = hashlib.blake2s(repr(parts).encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def encode(cursor: Cursor) -> str:
    """Serialise a cursor as unpadded base64url JSON."""
    doc = {
        "v": _VERSION,
        "l": cursor.listing,
        "o": cursor.order,
        "s": cursor.scope,
        "d": cursor.direction,
        "k": list(cursor.key),
    }
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, *, listing: str, order: str, scope: str, key_len: int) -> Cursor:
    """Parse and check a cursor made for this listing, order and filters; else InvalidCursor."""
    if not token or len(token) > MAX_CURSOR_CHARS:
        raise InvalidCursor("cursor is empty or too long")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        doc = json.loads(raw)
    except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise InvalidCursor("cursor is not base64url JSON") from exc
    if not isinstance(doc, dict) or doc.get("v") != _VERSION:
        raise InvalidCursor("unknown cursor format")
    if doc.get("l") != listing:
        raise InvalidCursor(f"cursor belongs to another listing, not {listing}")
    if doc.get("o") != order:
        raise InvalidCursor("cursor was made for another sort order")
    if doc.get("s") != scope:
        raise InvalidCursor("cursor was made for other filters")
    direction = doc.get("d")
    if direction not in ("next", "prev"):
        raise InvalidCursor("cursor has no direction")
    key = doc.get("k")
    if (
        not isinstance(key, list)
        or len(key) != key_len
        # bool is an int subclass; JSON true/false is never a key value
        or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in key)
    ):
        raise InvalidCursor("cursor key is malformed")
    return Cursor(listing, order, scope, direction, tuple(key))
