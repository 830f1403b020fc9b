def cbc_encrypt(round_keys: bytes, nrounds: int, iv: bytes, data: bytes, /) -> bytes: ...
def cbc_decrypt(round_keys: bytes, nrounds: int, iv: bytes, data: bytes, /) -> bytes: ...
def use_aesni(flag: bool, /) -> bool: ...
def backend() -> str: ...

# Present when the module was built against libcrypto (setup.py's KMSGATE_LIBCRYPTO).
def seal(
    round_keys: bytes,
    nrounds: int,
    head: bytes,
    base: bytes,
    rnd: bytes,
    salt: bytes,
    tail: bytes,
    hmac_key: bytes | None,
    /,
) -> bytes: ...
