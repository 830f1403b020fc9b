"""Product policy: which SKUs and KMS ids the host serves (allow/deny by id or name glob)."""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kmsgate.catalog import Catalog
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import KmsRequest


@dataclass(frozen=True, slots=True)
class ProductPattern:
    """A GUID (SKU id or KMS id) or a case-insensitive glob over SKU and KMS id names."""

    text: str
    guid: uuid.UUID | None

    @classmethod
    def parse(cls, text: str) -> ProductPattern:
        text = text.strip()
        if not text:
            raise ValueError("an empty product pattern matches nothing")
        try:
            return cls(text, uuid.UUID(text))
        except ValueError:
            return cls(text.casefold(), None)

    def matches(
        self, request: KmsRequest, names: tuple[str, ...], genuine_kms_id: uuid.UUID
    ) -> bool:
        if self.guid is not None:
            return self.guid in (request.sku_id, request.kms_counted_id, genuine_kms_id)
        return any(fnmatch.fnmatchcase(name, self.text) for name in names)


class ProductPolicy:
    """Refuses a request as a genuine host refuses an unlicensed product (0xC004F042)."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        deny_unknown: bool = False,
        covered: Callable[[uuid.UUID], bool] | None = None,
    ) -> None:
        """`covered` says whether the host holds a key for a KMS id (a genuine host refuses
        the rest); without it, "unknown" means missing from the catalogue."""
        self._catalog = catalog
        self._allow = tuple(ProductPattern.parse(p) for p in allow)
        self._deny = tuple(ProductPattern.parse(p) for p in deny)
        self._deny_unknown = deny_unknown
        self._covered = covered

    @property
    def active(self) -> bool:
        """False when the policy can refuse nothing (the engine then skips it)."""
        return bool(self._allow or self._deny or self._deny_unknown)

    def _names(self, request: KmsRequest, genuine_kms_id: uuid.UUID) -> tuple[str, ...]:
        names = []
        sku = self._catalog.sku(request.sku_id)
        if sku is not None:
            names.append(sku.name.casefold())
        for kms_id in {request.kms_counted_id, genuine_kms_id}:
            kms = self._catalog.kms_id(kms_id)
            if kms is not None:
                names.append(kms.name.casefold())
        return tuple(names)

    def _unknown(self, kms_id: uuid.UUID) -> bool:
        if self._covered is not None:
            return not self._covered(kms_id)
        return self._catalog.kms_id(kms_id) is None

    def __call__(self, request: KmsRequest) -> HResult | None:
        """None to serve the request, else the HRESULT to refuse it with."""
        if self._deny_unknown and self._unknown(request.kms_counted_id):
            return HResult.PRODUCT_NOT_ALLOWED
        # A rule naming a genuine id also catches the placeholder standing in for it.
        genuine = self._catalog.genuine_kms_id(request.kms_counted_id)
        names = self._names(request, genuine)
        if any(p.matches(request, names, genuine) for p in self._deny):
            return HResult.PRODUCT_NOT_ALLOWED
        if self._allow and not any(p.matches(request, names, genuine) for p in self._allow):
            return HResult.PRODUCT_NOT_ALLOWED
        return None
