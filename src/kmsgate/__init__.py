"""kmsgate: KMS volume-activation host, strict client and authenticating gateway."""

# First: decides whether the hot-path modules load compiled or from source (see _native.py).
from kmsgate import _native  # noqa: F401

__version__ = "0.1.0"
