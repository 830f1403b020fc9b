"""Sans-IO KMS protocol core: bytes and values in, bytes and values out."""
