"""The root of kmsgate's typed exceptions: `except KmsgateError` catches every one of them."""

from __future__ import annotations


class KmsgateError(Exception):
    """Base of every kmsgate error."""
