"""W6: log masking is linear, exact, and leaves what clients send about themselves alone.

Names of the form token-token-... made the masking regexes backtrack quadratically. These
tests assert what the masking outputs (never how long it takes): adversarial names hundreds of
kilobytes long would not finish within the test's time limit with the old patterns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kmsgate.observability.logs import setup_logging
from kmsgate.observability.masking import MASK, mask_secrets
from tests.adversarial.web_output import activate_as
from tests.support.web_node import Node, running

pytestmark = pytest.mark.integration

KEYWORDS = ("password", "passwd", "pwd", "secret", "token", "api_key", "api-key", "apikey")
NAME_CHARS = st.sampled_from("abcXYZ019_.-")
VALUE_CHARS = st.characters(
    categories=["L", "N"], exclude_characters="\u2028\u2029", max_codepoint=0x2FFF
)
# Pieces that trip backtracking: keywords, separators, quotes, scheme and credential marks.
PIECES = st.sampled_from(
    ["token", "-", ".", "_", "pass", "key", "secret", "=", ":", " ", '"', "'", "@", "://", "/",
     "\\", "bearer ", "x", "Basic "]
)  # fmt: skip
PATHOLOGICAL = (
    "token-" * 50_000,
    "-token" * 50_000,
    "a." * 100_000 + "://",
    'password="' * 30_000,
    "x://" + ":" * 100_000,
    "token " * 50_000,
    "Bearer" + " " * 200_000 + "x",
)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.text(NAME_CHARS, max_size=6),
    keyword=st.sampled_from(KEYWORDS),
    suffix=st.text(NAME_CHARS, max_size=6),
    separator=st.sampled_from(["=", ": ", " = ", ":"]),
    value=st.text(VALUE_CHARS, min_size=1, max_size=40),
    before=st.text(st.sampled_from("abc ,;"), max_size=20),
)
def test_a_secret_field_is_masked_exactly(
    prefix: str, keyword: str, suffix: str, separator: str, value: str, before: str
) -> None:
    key = f"{prefix}{keyword}{suffix}"
    text = f"{before} {key}{separator}{value}, next=1"
    assert mask_secrets(text) == f"{before} {key}{separator}{MASK}, next=1"


@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES, max_size=60).map("".join))
@example('token="\\')  # an unclosed quoted value ending in a lone backslash
@example('token=""token')  # text glued to the closing quote
@example('://token://"@')  # a masked value that, with what follows, looks like credentials
def test_masking_adversarial_text_is_stable(text: str) -> None:
    once = mask_secrets(text)
    assert mask_secrets(once) == once  # nothing left that looks like a secret
    low = text.lower()
    if "=" not in text and ":" not in text and "bearer" not in low and "basic" not in low:
        assert once == text  # no separator, no secret: untouched


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=lambda t: repr(t[:12]))
def test_pathological_names_are_masked_correctly(text: str) -> None:
    masked = mask_secrets(text)
    if text.startswith("password="):
        # Each key's quoted value runs to the next quote, and the text glued to that quote
        # (the next key but one, up to its quote) belongs to the value: three keys a field.
        assert text.count("password") % 3 == 0
        assert masked == f'password={MASK}"' * (text.count("password") // 3)
    else:
        assert masked == text
    # The name itself as a key, and a secret field after it: both are still found.
    if text[-1] not in '"/:x ':
        assert mask_secrets(text + "=hunter2") == text + f"={MASK}"
    followed = mask_secrets(text + " password=hunter2 tail")
    assert followed.endswith(f" password={MASK} tail"), followed[-40:]


def test_activation_records_are_logged_as_sent_other_records_are_masked(tmp_path: Path) -> None:
    """A real node logs machine names exactly; its own messages still get masked."""
    names = (
        "token-token-token-token-token-token-token-token-token-token",
        "password=hunter2-is-a-machine-name",
    )
    node = Node(tmp_path / "node", web=False)
    with running(node):
        asyncio.run(activate_as(node.kms_port, names))
        deadline = time.monotonic() + 20
        while not all(name in node.log() for name in names):
            assert time.monotonic() < deadline, node.log()[-2000:]
            time.sleep(0.1)
    log_file = tmp_path / "other.log"
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("info", file=log_file)
    try:
        logging.getLogger("kmsgate.web").warning("login with password=hunter2 failed")
    finally:
        # Put pytest's handlers back: ours would mask other tests' captured records.
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "password=***" in log_file.read_text()
