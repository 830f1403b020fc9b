"""How the words an admin types name a SKU: folded name tokens, best matches, hints."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from kmsgate.catalog.model import Sku

GLOB_CHARS = frozenset("*?[")
_LISTED_CANDIDATES = 10
# Words admins type for the words SKU names use; both sides are folded onto one token.
_SYNONYMS = {
    "professional": "pro",
    "proplus": "pro plus",
    "dc": "datacenter",
    "std": "standard",
    "ent": "enterprise",
    "win": "windows",
    "edu": "education",
    "srv": "server",
}
_TOKEN = re.compile(r"[0-9]+(?:\.[0-9]+)?|[a-z]+")
_PRE_RELEASE = re.compile(r"preview|pre-release|beta|\[rc\]|insider", re.IGNORECASE)


def name_tokens(text: str) -> frozenset[str]:
    """Words of a product name, folded ("10/11" is "10" and "11"; "Professional" is "pro")."""
    words = " ".join(_SYNONYMS.get(w, w) for w in _TOKEN.findall(text.casefold()))
    return frozenset(words.split())


def best_word_matches(
    folded: str, skus: Sequence[Sku], sku_tokens: Sequence[frozenset[str]]
) -> list[Sku]:
    """SKUs containing the text or all its words, narrowed to the fewest extra words.

    `sku_tokens` holds `name_tokens` of each SKU's name, in the order of `skus`.
    """
    wanted = name_tokens(folded)
    found: list[tuple[tuple[int, bool], Sku]] = []
    for sku, tokens in zip(skus, sku_tokens, strict=True):
        if folded in sku.name.casefold() or (wanted and wanted <= tokens):
            # A pre-release SKU only wins when asked for by name.
            pre = bool(_PRE_RELEASE.search(sku.name)) and not _PRE_RELEASE.search(folded)
            found.append(((len(tokens - wanted), pre), sku))
    if not found:
        return []
    best = min(rank for rank, _ in found)
    if sum(1 for rank, _ in found if rank == best) == 1:
        return [sku for rank, sku in found if rank == best]
    return [sku for _, sku in sorted(found, key=lambda item: item[0])]


def did_you_mean(folded: str, skus: Iterable[Sku]) -> str:
    """The hint for an unknown product: the closest SKU names, else where to search."""
    import difflib  # only on this error path; keeps importing the catalogue light

    names = {s.name.casefold(): s for s in skus}
    close = [names[n] for n in difflib.get_close_matches(folded, names, n=5, cutoff=0.6)]
    return f" Did you mean:{listing(close)}" if close else " See `kmsgate products --search`."


def listing(skus: Iterable[Sku]) -> str:
    """Indented list of SKUs for error messages, capped so a broad match stays readable."""
    items = list(skus)
    lines = [f"\n  {s.name} ({s.id})" for s in items[:_LISTED_CANDIDATES]]
    if len(items) > _LISTED_CANDIDATES:
        lines.append(f"\n  ... and {len(items) - _LISTED_CANDIDATES} more")
    return "".join(lines)
