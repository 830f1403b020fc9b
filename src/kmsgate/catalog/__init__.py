"""Product catalogue: the shipped KMS product data and lookups by SKU, KMS id, name and GVLK."""

from kmsgate.catalog.loading import default_catalog
from kmsgate.catalog.lookup import Catalog
from kmsgate.catalog.model import (
    Application,
    Csvlk,
    GenuineHost,
    HostBuild,
    KmsId,
    Sku,
    SkuRelease,
    VlmcsdCsvlk,
)

__all__ = [
    "Application",
    "Catalog",
    "Csvlk",
    "GenuineHost",
    "HostBuild",
    "KmsId",
    "Sku",
    "SkuRelease",
    "VlmcsdCsvlk",
    "default_catalog",
]
