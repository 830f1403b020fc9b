"""Secrets masked out of log text: passwords, secrets, tokens, URL credentials.

Every handler setup_logging builds carries SecretMaskingFilter (observability/logs.py).
"""

from __future__ import annotations

import logging
import re
from typing import Final

MASK: Final = "***"

# Every pattern runs in linear time: a key or scheme is only tried where its run of name
# characters starts (a look-behind), runs are matched possessively (*+, ++), and a quoted value
# without its closing quote (or ending in a lone backslash) is masked to the end instead of
# failing after a scan to the end; text glued to a closing quote belongs to the value.
# Names such as token-token-token-... made the earlier, backtracking forms quadratic.
_SECRET_PATTERNS: Final = (
    # scheme://user:password@host -> scheme://user:***@host
    # (greedy up to the last @ before any /: an unescaped @ in a password stays hidden)
    (
        re.compile(r"((?<![a-zA-Z0-9+.-])[a-zA-Z0-9+.-]*+://[^\s:/@]*+):[^\s/]*@"),
        rf"\1:{MASK}@",
    ),
    # password=x, client_secret: "x", "api_key": "x", token=x ...
    (
        re.compile(
            r"""(?ix)
            (["']?)
            (?<![\w.-])(?=[\w.-]*?(?:password|passwd|pwd|secret|token|api[_-]?key))
            ([\w.-]++)\1
            (\s*+[=:]\s*+)
            ((?:"(?:[^"\\]|\\.)*+\\?"?|'[^']*+'?)[^\s,;&'"}\]]*+|[^\s,;&'"}\]]++)
            """
        ),
        rf"\1\2\1\3{MASK}",
    ),
    # Authorization: Bearer x / Basic x
    (re.compile(r"(?i)\b(bearer|basic)\s++[A-Za-z0-9._~+/=-]{8,}+"), rf"\1 {MASK}"),
)


def _may_hold_secret(text: str) -> bool:
    """Cheap pre-check covering every pattern's keyword; (?i) regex scans cost 10x more."""
    low = text.lower()
    return (
        "://" in low
        or "pass" in low
        or "pwd" in low
        or "secret" in low
        or "token" in low
        or "key" in low
        or "bearer" in low
        or "basic" in low
    )


# Passes of mask_secrets at most: one pass can leave a masked value that, with the text
# after it, looks like another secret (`user:***"@`); a second one masks that too.
MASK_PASSES: Final = 4


def mask_secrets(text: str) -> str:
    """Replace passwords, secrets, tokens and URL credentials in text by ***."""
    if not _may_hold_secret(text):
        return text
    for _ in range(MASK_PASSES):
        masked = text
        for pattern, replacement in _SECRET_PATTERNS:
            masked = pattern.sub(replacement, masked)
        if masked == text:
            break
        text = masked
    return text


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in a record's message and traceback; never drops a record.

    Activation records are left alone: their text is only what a client sent about itself
    (machine name, product), which holds none of our secrets, and masking it would alter
    the record on the hot path.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(getattr(record, "kms", None), dict) and not record.exc_info:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # A bad format string is the formatter's problem to report, not the filter's.
            return True
        masked = mask_secrets(message)
        if masked is not message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True
