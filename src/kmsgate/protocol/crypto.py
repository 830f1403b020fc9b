"""KMS ciphers, MACs and hashes (spec §11.3, §12): the v4/v5/v6 keys, CBC-MAC, HMAC, padding.

Pure computation: no randomness, no clock, no I/O. The block cipher itself is rijndael.py;
its names are re-exported here.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from kmsgate.protocol import rijndael
from kmsgate.protocol.errors import LocalProtocolError, ProtocolError

# Re-exported: the block cipher's names, and its backend as chosen at import (the switch
# that tests and benchmarks flip is rijndael.ACCELERATED).
from kmsgate.protocol.rijndael import (
    ACCELERATED,
    BLOCK_SIZE,
    CIPHER_BACKEND,
    BlockCipher,
    RijndaelCipher,
    expand_key,
)

__all__ = [
    "ACCELERATED",
    "BLOCK_SIZE",
    "CIPHER_BACKEND",
    "C_SEAL",
    "V4_KEY",
    "V5_KEY",
    "V6_KEY",
    "V6_ROUND_KEY_TWEAKS",
    "BlockCipher",
    "RijndaelCipher",
    "cipher_for_version",
    "expand_key",
    "kms_v4_mac",
    "pkcs7_pad",
    "pkcs7_unpad",
    "seal_response",
    "sha256",
    "v4_cipher",
    "v5_cipher",
    "v6_cipher",
    "v6_hmac",
    "v6_hmac_key",
    "xor_bytes",
]

V4_KEY: Final = bytes.fromhex("053D8307F9E5F088EB5EA6686CF037C7E4EFD2D6")
V5_KEY: Final = bytes.fromhex("CD7E796F2AB25DCB55FFC8EF8364C470")
V6_KEY: Final = bytes.fromhex("A94A4195E201432D9BCB460405D84A21")

# Spec §12.1: v6 flips byte 0 of round keys 4, 6 and 8 after the normal AES-128 expansion.
V6_ROUND_KEY_TWEAKS: Final[Mapping[int, int]] = {64: 0x73, 96: 0x09, 128: 0xE4}

# Spec §12.6 time-slot constants.
_TIME_C1: Final = 0x00000022816889BD
_TIME_C2: Final = 0x000000208CBAB5ED
_TIME_C3: Final = 0x3156CD5AC628477A
_U64: Final = (1 << 64) - 1

_ZERO_IV: Final = bytes(BLOCK_SIZE)


class _SharedCipher:
    """One cipher instance per backend, built on first use. rijndael.ACCELERATED is read at
    each call, so that tests and benchmarks that flip it get the matching backend. A list
    indexed by it, where a functools.cache call cost ~800 instructions, twice a request."""

    def __init__(self, build: Callable[[bool], BlockCipher]) -> None:
        self._build = build
        self._built: list[BlockCipher | None] = [None, None]

    def get(self) -> BlockCipher:
        accelerated = rijndael.ACCELERATED
        cipher = self._built[accelerated]
        if cipher is None:
            cipher = self._built[accelerated] = self._build(accelerated)
        return cipher


def _v4_cipher(accelerated: bool) -> BlockCipher:
    return RijndaelCipher(V4_KEY, accelerated=accelerated)


def _v5_cipher(accelerated: bool) -> BlockCipher:
    # Plain AES-128 is Rijndael without tweaks: no need to load OpenSSL's AES (about 9 MiB
    # of the `cryptography` package) into every serving process.
    return RijndaelCipher(V5_KEY, accelerated=accelerated)


def _v6_cipher(accelerated: bool) -> BlockCipher:
    return RijndaelCipher(V6_KEY, V6_ROUND_KEY_TWEAKS, accelerated=accelerated)


_V4_CIPHERS: Final = _SharedCipher(_v4_cipher)
_V5_CIPHERS: Final = _SharedCipher(_v5_cipher)
_V6_CIPHERS: Final = _SharedCipher(_v6_cipher)


def v4_cipher() -> BlockCipher:
    """Rijndael-160 with V4_KEY (spec §11.3), shared instance."""
    return _V4_CIPHERS.get()


def v5_cipher() -> BlockCipher:
    """Plain AES-128 with V5_KEY (Rijndael, no tweaks), shared instance."""
    return _V5_CIPHERS.get()


def v6_cipher() -> BlockCipher:
    """AES-128 with V6_KEY and the §12.1 modified schedule (encrypt and decrypt), shared."""
    return _V6_CIPHERS.get()


def cipher_for_version(major: int) -> BlockCipher:
    """Block cipher of an encrypted KMS protocol version: 5 or 6."""
    if major == 5:
        return v5_cipher()
    if major == 6:
        return v6_cipher()
    raise LocalProtocolError(f"KMS protocol version {major} has no block cipher (only 5 and 6)")


# --- MAC, padding, hashes -------------------------------------------------------------------


def kms_v4_mac(message: bytes) -> bytes:
    """v4 CBC-MAC (§11.3): append 0x80 and zeros to a multiple of 16, CBC under zero IV."""
    padded = bytes(message) + b"\x80" + bytes(-(len(message) + 1) % BLOCK_SIZE)
    return v4_cipher().cbc_encrypt(_ZERO_IV, padded)[-BLOCK_SIZE:]


def pkcs7_pad(data: bytes) -> bytes:
    """PKCS#7 pad to 16 bytes: always 1..16 bytes of value n."""
    n = BLOCK_SIZE - len(data) % BLOCK_SIZE
    return bytes(data) + bytes((n,)) * n


def pkcs7_unpad(data: bytes) -> bytes:
    """Strip PKCS#7 padding; raise ProtocolError when the peer's padding is malformed."""
    if not data or len(data) % BLOCK_SIZE:
        raise ProtocolError(
            f"PKCS#7: padded data must be a non-empty multiple of 16 bytes, got {len(data)}"
        )
    n = data[-1]
    if not 1 <= n <= BLOCK_SIZE:
        raise ProtocolError(f"PKCS#7: last byte {n:#04x} is not a pad length 1..16")
    if data[-n:] != bytes((n,)) * n:
        raise ProtocolError(f"PKCS#7: the last {n} bytes are not all {n:#04x}")
    return bytes(data[:-n])


def sha256(data: bytes) -> bytes:
    """SHA-256 digest."""
    return hashlib.sha256(data).digest()


class _SlotKey:
    """The host's current time slot and its key: every answer of ~4 hours asks for it."""

    def __init__(self) -> None:
        self.slot = -1
        self.key = b""


_current: Final = _SlotKey()


def v6_hmac_key(filetime: int, slot_offset: int = 0) -> bytes:
    """16-byte v6 HMAC key for a FILETIME (§12.6); slot_offset t adds t·C1 like vlmcs does."""
    _check_filetime(filetime)
    slot = filetime // _TIME_C1
    if slot_offset:
        return _v6_slot_key(slot, slot_offset)
    current = _current
    if slot != current.slot:
        current.key = _v6_slot_key(slot, 0)
        current.slot = slot
    return current.key


def _check_filetime(filetime: int) -> None:
    # A shift, not a comparison with 2**64 - 1: that constant is no machine int, the shift is.
    if filetime < 0 or filetime >> 64:
        raise LocalProtocolError(f"FILETIME {filetime} is not an unsigned 64-bit value")


# A key holds for a time slot of about 4 hours: a host's answers reuse a handful of them.
@functools.lru_cache(maxsize=64)
def _v6_slot_key(slot_number: int, slot_offset: int) -> bytes:
    # vlmcs's ±1 tolerance adds t·C1 to the slot value (not t·C2); we mirror it for interop.
    slot = (slot_number * _TIME_C2 + _TIME_C3 + slot_offset * _TIME_C1) & _U64
    return sha256(slot.to_bytes(8, "little"))[16:]


def v6_hmac(filetime: int, message: bytes, slot_offset: int = 0) -> bytes:
    """Truncated v6 HMAC field: last 16 bytes of HMAC-SHA256 over R6 up to XorSalts (§12.6)."""
    _check_filetime(filetime)
    inner_start, outer_start = _v6_hmac_starts(filetime // _TIME_C1, slot_offset)
    inner = inner_start.copy()
    inner.update(message)
    outer = outer_start.copy()
    outer.update(inner.digest())
    return outer.digest()[16:]


class HashState(Protocol):
    """A hashlib object part way through a message."""

    def copy(self) -> HashState: ...

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


_HMAC_BLOCK: Final = 64
_INNER_PAD: Final = bytes(byte ^ 0x36 for byte in range(256))
_OUTER_PAD: Final = bytes(byte ^ 0x5C for byte in range(256))


# HMAC's two hashes start from the key's padded block: hashed once per time slot, copied per
# message (hmac.digest sets up OpenSSL's HMAC afresh each call, three times the cost).
@functools.lru_cache(maxsize=64)
def _v6_hmac_starts(slot_number: int, slot_offset: int) -> tuple[HashState, HashState]:
    block = _v6_slot_key(slot_number, slot_offset).ljust(_HMAC_BLOCK, b"\0")
    return hashlib.sha256(block.translate(_INNER_PAD)), hashlib.sha256(block.translate(_OUTER_PAD))


def xor_bytes(left: bytes, right: bytes) -> bytes:
    """`left` XOR `right` as little-endian integers, `len(left)` bytes long."""
    return (int.from_bytes(left, "little") ^ int.from_bytes(right, "little")).to_bytes(
        len(left), "little"
    )


# --- the v5/v6 response in one piece ---------------------------------------------------------


# (round_keys, nrounds, head, base, rnd, salt, tail, hmac_key) -> ciphertext: _cipher.pyi.
_Seal = Callable[[bytes, int, bytes, bytes, bytes, bytes, bytes, bytes | None], bytes]


# The C extension's one-call sealing, present when it was built against libcrypto.
_C_SEAL: Final[_Seal | None] = getattr(rijndael._ACCEL, "seal", None)
C_SEAL: Final[bool] = _C_SEAL is not None


def seal_response(
    major: int, head: bytes, base: bytes, rnd: bytes, salt: bytes, tail: bytes, response_time: int
) -> bytes:
    """Ciphertext of a v5/v6 response (§11.4, §12.5): head | base | rnd XOR salt | SHA-256(rnd)
    | tail, then for v6 the HMAC's last 16 bytes keyed by the response time, padded, CBC."""
    if len(rnd) != BLOCK_SIZE or len(salt) != BLOCK_SIZE or len(head) != BLOCK_SIZE:
        raise LocalProtocolError("the response's head, random and salt are 16 bytes each")
    cipher = cipher_for_version(major)
    if _C_SEAL is not None and isinstance(cipher, RijndaelCipher) and cipher.accelerated:
        key = v6_hmac_key(response_time) if major == 6 else None
        return _C_SEAL(cipher.round_keys, cipher.rounds, head, base, rnd, salt, tail, key)
    plain = head + base + xor_bytes(rnd, salt) + sha256(rnd) + tail
    if major == 6:
        plain += v6_hmac(response_time, plain)
    return cipher.cbc_encrypt(_ZERO_IV, pkcs7_pad(plain))
