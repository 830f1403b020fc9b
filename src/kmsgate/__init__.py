"""kmsgate: KMS volume-activation host, strict client and authenticating gateway."""

__version__ = "0.1.0"
