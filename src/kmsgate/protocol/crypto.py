"""KMS block ciphers, MACs and hashes (spec §11.3, §12): Rijndael, AES v5/v6, CBC-MAC, HMAC.

Pure computation: no randomness, no clock, no I/O. The optional C extension
``kmsgate.protocol._cipher`` runs the block rounds; key schedules always come from Python.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Protocol, cast

from kmsgate.protocol.errors import LocalProtocolError, ProtocolError

__all__ = [
    "ACCELERATED",
    "CIPHER_BACKEND",
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
    "sha256",
    "v4_cipher",
    "v5_cipher",
    "v6_cipher",
    "v6_hmac",
    "v6_hmac_key",
]

BLOCK_SIZE = 16

V4_KEY = bytes.fromhex("053D8307F9E5F088EB5EA6686CF037C7E4EFD2D6")
V5_KEY = bytes.fromhex("CD7E796F2AB25DCB55FFC8EF8364C470")
V6_KEY = bytes.fromhex("A94A4195E201432D9BCB460405D84A21")

# Spec §12.1: v6 flips byte 0 of round keys 4, 6 and 8 after the normal AES-128 expansion.
V6_ROUND_KEY_TWEAKS: Mapping[int, int] = {64: 0x73, 96: 0x09, 128: 0xE4}

# Spec §12.6 time-slot constants.
_TIME_C1 = 0x00000022816889BD
_TIME_C2 = 0x000000208CBAB5ED
_TIME_C3 = 0x3156CD5AC628477A
_U64 = (1 << 64) - 1

_ZERO_IV = bytes(BLOCK_SIZE)
_WORDS4 = struct.Struct(">4I")


# --- GF(2^8) tables -------------------------------------------------------------------------


def _xtime(a: int) -> int:
    """Multiply by x in GF(2^8) modulo the AES polynomial."""
    a <<= 1
    return (a ^ 0x11B) if a & 0x100 else a


def _gmul(a: int, b: int) -> int:
    """Multiply two field elements."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a = _xtime(a)
        b >>= 1
    return product


def _build_sbox() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Compute the S-box (inverse in GF(2^8) then the affine map) and its inverse."""
    # Powers of the generator 3 give log/antilog tables, hence cheap inverses at import.
    exp = [0] * 255
    log = [0] * 256
    e = 1
    for i in range(255):
        exp[i] = e
        log[e] = i
        e ^= _xtime(e)
    sbox = [0] * 256
    for x in range(256):
        inv = exp[(255 - log[x]) % 255] if x else 0
        s = inv
        for shift in range(1, 5):
            s ^= ((inv << shift) | (inv >> (8 - shift))) & 0xFF
        sbox[x] = s ^ 0x63
    inv_sbox = [0] * 256
    for x, s in enumerate(sbox):
        inv_sbox[s] = x
    return tuple(sbox), tuple(inv_sbox)


def _ror8(word: int) -> int:
    return ((word >> 8) | (word << 24)) & 0xFFFFFFFF


def _rotations(t0: list[int]) -> tuple[tuple[int, ...], ...]:
    t1 = [_ror8(w) for w in t0]
    t2 = [_ror8(w) for w in t1]
    t3 = [_ror8(w) for w in t2]
    return tuple(t0), tuple(t1), tuple(t2), tuple(t3)


_SBOX, _INV_SBOX = _build_sbox()
# Words are big-endian: byte 0 of a state column is the most significant byte.
_TE0, _TE1, _TE2, _TE3 = _rotations(
    [(_gmul(s, 2) << 24) | (s << 16) | (s << 8) | _gmul(s, 3) for s in _SBOX]
)
_TD0, _TD1, _TD2, _TD3 = _rotations(
    [
        (_gmul(i, 14) << 24) | (_gmul(i, 9) << 16) | (_gmul(i, 13) << 8) | _gmul(i, 11)
        for i in _INV_SBOX
    ]
)
# Final-round tables: the S-box output already shifted into place saves work per block.
_S24 = tuple(s << 24 for s in _SBOX)
_S16 = tuple(s << 16 for s in _SBOX)
_S8 = tuple(s << 8 for s in _SBOX)
_S0 = _SBOX
_IS24 = tuple(s << 24 for s in _INV_SBOX)
_IS16 = tuple(s << 16 for s in _INV_SBOX)
_IS8 = tuple(s << 8 for s in _INV_SBOX)
_IS0 = _INV_SBOX


# --- key schedule ---------------------------------------------------------------------------


def _sub_word(w: int) -> int:
    return _S24[w >> 24] | _S16[(w >> 16) & 0xFF] | _S8[(w >> 8) & 0xFF] | _S0[w & 0xFF]


def _inv_mix_column(w: int) -> int:
    # Td tables are InvMixColumns∘InvSubBytes, so feeding them S-box outputs leaves InvMixColumns.
    return (
        _TD0[_SBOX[w >> 24]]
        ^ _TD1[_SBOX[(w >> 16) & 0xFF]]
        ^ _TD2[_SBOX[(w >> 8) & 0xFF]]
        ^ _TD3[_SBOX[w & 0xFF]]
    )


def expand_key(key: bytes, round_key_tweaks: Mapping[int, int] | None = None) -> bytes:
    """Return the Rijndael encryption round keys (16·(Nr+1) bytes) after applying the tweaks."""
    if len(key) not in (16, 20, 24, 28, 32):
        raise LocalProtocolError(f"Rijndael key must be 16/20/24/28/32 bytes, got {len(key)}")
    nk = len(key) // 4
    total = 4 * (nk + 6 + 1)
    w = list(struct.unpack(f">{nk}I", key))
    rcon = 1
    for i in range(nk, total):
        t = w[i - 1]
        if i % nk == 0:
            t = _sub_word(((t << 8) | (t >> 24)) & 0xFFFFFFFF) ^ (rcon << 24)
            rcon = _xtime(rcon)
        elif nk > 6 and i % nk == 4:
            t = _sub_word(t)
        w.append(w[i - nk] ^ t)
    schedule = bytearray(struct.pack(f">{total}I", *w))
    for offset, value in (round_key_tweaks or {}).items():
        if not 0 <= offset < len(schedule):
            raise LocalProtocolError(
                f"round key tweak offset {offset} outside the {len(schedule)}-byte schedule"
            )
        if not 0 <= value <= 0xFF:
            raise LocalProtocolError(f"round key tweak value {value:#x} is not a byte")
        schedule[offset] ^= value
    return bytes(schedule)


# --- C accelerator --------------------------------------------------------------------------


class _CipherModule(Protocol):
    def cbc_encrypt(self, round_keys: bytes, nrounds: int, iv: bytes, data: bytes, /) -> bytes: ...

    def cbc_decrypt(self, round_keys: bytes, nrounds: int, iv: bytes, data: bytes, /) -> bytes: ...


def _load_accelerator() -> tuple[_CipherModule | None, str]:
    """The C extension unless missing or disabled by KMSGATE_PURE_PYTHON_CIPHER=1, and why."""
    if os.environ.get("KMSGATE_PURE_PYTHON_CIPHER") == "1":
        return None, "pure Python (KMSGATE_PURE_PYTHON_CIPHER=1)"
    try:
        module = importlib.import_module("kmsgate.protocol._cipher")
    except ImportError:
        return None, "pure Python (C accelerator not built)"
    abi = "abi3" if ".abi3." in str(getattr(module, "__file__", "")) else "version-specific build"
    return cast(_CipherModule, module), f"C accelerator ({abi})"


# CIPHER_BACKEND says which block-cipher path this process runs (the start-up log names it).
_ACCEL, CIPHER_BACKEND = _load_accelerator()
# The default backend of RijndaelCipher and of the v4/v6 singletons.
ACCELERATED: bool = _ACCEL is not None


# --- block ciphers --------------------------------------------------------------------------


def _check_block(block: bytes) -> None:
    if len(block) != BLOCK_SIZE:
        raise LocalProtocolError(f"cipher block must be 16 bytes, got {len(block)}")


def _check_cbc(iv: bytes, data: bytes) -> None:
    if len(iv) != BLOCK_SIZE:
        raise LocalProtocolError(f"CBC IV must be 16 bytes, got {len(iv)}")
    if len(data) % BLOCK_SIZE:
        raise LocalProtocolError(f"CBC data must be a multiple of 16 bytes, got {len(data)}")


class BlockCipher(ABC):
    """A 128-bit block cipher with a fixed key, plus unpadded CBC over it."""

    @abstractmethod
    def encrypt_block(self, block: bytes) -> bytes:
        """Encrypt one 16-byte block."""

    @abstractmethod
    def decrypt_block(self, block: bytes) -> bytes:
        """Decrypt one 16-byte block."""

    @abstractmethod
    def cbc_encrypt(self, iv: bytes, data: bytes) -> bytes:
        """CBC-encrypt data (a multiple of 16 bytes, no padding added)."""

    @abstractmethod
    def cbc_decrypt(self, iv: bytes, data: bytes) -> bytes:
        """CBC-decrypt data (a multiple of 16 bytes, no padding removed)."""


class RijndaelCipher(BlockCipher):
    """Rijndael, 128-bit block, with an injectable round-key tweak; pure Python or C rounds."""

    __slots__ = ("_accel", "_dk", "_dk_bytes", "_ek", "_ek_bytes", "_nr")

    def __init__(
        self,
        key: bytes,
        round_key_tweaks: Mapping[int, int] | None = None,
        *,
        accelerated: bool | None = None,
    ) -> None:
        """Expand the key once; accelerated=None follows the module's ACCELERATED default."""
        if accelerated is None:
            accelerated = ACCELERATED
        if accelerated and _ACCEL is None:
            raise LocalProtocolError("the C cipher extension is not available")
        self._accel = _ACCEL if accelerated else None
        ek_bytes = expand_key(key, round_key_tweaks)
        nr = len(ek_bytes) // 16 - 1
        ek = struct.unpack(f">{4 * (nr + 1)}I", ek_bytes)
        # Equivalent inverse cipher: reversed round keys, InvMixColumns on rounds 1..Nr-1.
        # It is derived from the tweaked keys, so the v6 tweak applies to decryption as well.
        dk: list[int] = []
        for r in range(nr, -1, -1):
            words = ek[4 * r : 4 * r + 4]
            dk.extend(words if r in (0, nr) else (_inv_mix_column(x) for x in words))
        self._nr = nr
        self._ek: tuple[int, ...] = ek
        self._dk: tuple[int, ...] = tuple(dk)
        self._ek_bytes = ek_bytes
        self._dk_bytes = struct.pack(f">{len(dk)}I", *dk)

    @property
    def rounds(self) -> int:
        """Number of rounds Nr."""
        return self._nr

    @property
    def round_keys(self) -> bytes:
        """Encryption round keys as used (tweaks applied), 16·(Nr+1) bytes."""
        return self._ek_bytes

    @property
    def accelerated(self) -> bool:
        """True when this instance runs its rounds in the C extension."""
        return self._accel is not None

    def _enc(self, s0: int, s1: int, s2: int, s3: int) -> tuple[int, int, int, int]:
        ek = self._ek
        te0, te1, te2, te3 = _TE0, _TE1, _TE2, _TE3
        s0 ^= ek[0]
        s1 ^= ek[1]
        s2 ^= ek[2]
        s3 ^= ek[3]
        k = 4
        for _ in range(self._nr - 1):
            t0 = te0[s0 >> 24] ^ te1[(s1 >> 16) & 255] ^ te2[(s2 >> 8) & 255] ^ te3[s3 & 255]
            t1 = te0[s1 >> 24] ^ te1[(s2 >> 16) & 255] ^ te2[(s3 >> 8) & 255] ^ te3[s0 & 255]
            t2 = te0[s2 >> 24] ^ te1[(s3 >> 16) & 255] ^ te2[(s0 >> 8) & 255] ^ te3[s1 & 255]
            t3 = te0[s3 >> 24] ^ te1[(s0 >> 16) & 255] ^ te2[(s1 >> 8) & 255] ^ te3[s2 & 255]
            s0, s1, s2, s3 = t0 ^ ek[k], t1 ^ ek[k + 1], t2 ^ ek[k + 2], t3 ^ ek[k + 3]
            k += 4
        a, b, c, d = _S24, _S16, _S8, _S0
        return (
            a[s0 >> 24] ^ b[(s1 >> 16) & 255] ^ c[(s2 >> 8) & 255] ^ d[s3 & 255] ^ ek[k],
            a[s1 >> 24] ^ b[(s2 >> 16) & 255] ^ c[(s3 >> 8) & 255] ^ d[s0 & 255] ^ ek[k + 1],
            a[s2 >> 24] ^ b[(s3 >> 16) & 255] ^ c[(s0 >> 8) & 255] ^ d[s1 & 255] ^ ek[k + 2],
            a[s3 >> 24] ^ b[(s0 >> 16) & 255] ^ c[(s1 >> 8) & 255] ^ d[s2 & 255] ^ ek[k + 3],
        )

    def _dec(self, s0: int, s1: int, s2: int, s3: int) -> tuple[int, int, int, int]:
        dk = self._dk
        td0, td1, td2, td3 = _TD0, _TD1, _TD2, _TD3
        s0 ^= dk[0]
        s1 ^= dk[1]
        s2 ^= dk[2]
        s3 ^= dk[3]
        k = 4
        for _ in range(self._nr - 1):
            t0 = td0[s0 >> 24] ^ td1[(s3 >> 16) & 255] ^ td2[(s2 >> 8) & 255] ^ td3[s1 & 255]
            t1 = td0[s1 >> 24] ^ td1[(s0 >> 16) & 255] ^ td2[(s3 >> 8) & 255] ^ td3[s2 & 255]
            t2 = td0[s2 >> 24] ^ td1[(s1 >> 16) & 255] ^ td2[(s0 >> 8) & 255] ^ td3[s3 & 255]
            t3 = td0[s3 >> 24] ^ td1[(s2 >> 16) & 255] ^ td2[(s1 >> 8) & 255] ^ td3[s0 & 255]
            s0, s1, s2, s3 = t0 ^ dk[k], t1 ^ dk[k + 1], t2 ^ dk[k + 2], t3 ^ dk[k + 3]
            k += 4
        a, b, c, d = _IS24, _IS16, _IS8, _IS0
        return (
            a[s0 >> 24] ^ b[(s3 >> 16) & 255] ^ c[(s2 >> 8) & 255] ^ d[s1 & 255] ^ dk[k],
            a[s1 >> 24] ^ b[(s0 >> 16) & 255] ^ c[(s3 >> 8) & 255] ^ d[s2 & 255] ^ dk[k + 1],
            a[s2 >> 24] ^ b[(s1 >> 16) & 255] ^ c[(s0 >> 8) & 255] ^ d[s3 & 255] ^ dk[k + 2],
            a[s3 >> 24] ^ b[(s2 >> 16) & 255] ^ c[(s1 >> 8) & 255] ^ d[s0 & 255] ^ dk[k + 3],
        )

    def encrypt_block(self, block: bytes) -> bytes:
        """Encrypt one 16-byte block."""
        _check_block(block)
        if self._accel is not None:
            return self._accel.cbc_encrypt(self._ek_bytes, self._nr, _ZERO_IV, block)
        return _WORDS4.pack(*self._enc(*_WORDS4.unpack(block)))

    def decrypt_block(self, block: bytes) -> bytes:
        """Decrypt one 16-byte block."""
        _check_block(block)
        if self._accel is not None:
            return self._accel.cbc_decrypt(self._dk_bytes, self._nr, _ZERO_IV, block)
        return _WORDS4.pack(*self._dec(*_WORDS4.unpack(block)))

    def cbc_encrypt(self, iv: bytes, data: bytes) -> bytes:
        """CBC-encrypt data (a multiple of 16 bytes, no padding added)."""
        _check_cbc(iv, data)
        if self._accel is not None:
            return self._accel.cbc_encrypt(self._ek_bytes, self._nr, iv, data)
        words = struct.unpack(f">{len(data) // 4}I", data)
        out: list[int] = []
        c0, c1, c2, c3 = _WORDS4.unpack(iv)
        enc = self._enc
        for i in range(0, len(words), 4):
            c0, c1, c2, c3 = enc(
                c0 ^ words[i], c1 ^ words[i + 1], c2 ^ words[i + 2], c3 ^ words[i + 3]
            )
            out += (c0, c1, c2, c3)
        return struct.pack(f">{len(out)}I", *out)

    def cbc_decrypt(self, iv: bytes, data: bytes) -> bytes:
        """CBC-decrypt data (a multiple of 16 bytes, no padding removed)."""
        _check_cbc(iv, data)
        if self._accel is not None:
            return self._accel.cbc_decrypt(self._dk_bytes, self._nr, iv, data)
        words = struct.unpack(f">{len(data) // 4}I", data)
        out: list[int] = []
        p0, p1, p2, p3 = _WORDS4.unpack(iv)
        dec = self._dec
        for i in range(0, len(words), 4):
            c0, c1, c2, c3 = words[i : i + 4]
            d0, d1, d2, d3 = dec(c0, c1, c2, c3)
            out += (d0 ^ p0, d1 ^ p1, d2 ^ p2, d3 ^ p3)
            p0, p1, p2, p3 = c0, c1, c2, c3
        return struct.pack(f">{len(out)}I", *out)


# Cached per backend so that flipping ACCELERATED (tests, benchmarks) picks the matching one.
@functools.cache
def _v4_cipher(accelerated: bool) -> BlockCipher:
    return RijndaelCipher(V4_KEY, accelerated=accelerated)


@functools.cache
def _v6_cipher(accelerated: bool) -> BlockCipher:
    return RijndaelCipher(V6_KEY, V6_ROUND_KEY_TWEAKS, accelerated=accelerated)


def v4_cipher() -> BlockCipher:
    """Rijndael-160 with V4_KEY (spec §11.3), shared instance."""
    return _v4_cipher(ACCELERATED)


@functools.cache
def _v5_cipher(accelerated: bool) -> BlockCipher:
    # Plain AES-128 is Rijndael without tweaks: no need to load OpenSSL's AES (about 9 MiB
    # of the `cryptography` package) into every serving process.
    return RijndaelCipher(V5_KEY, accelerated=accelerated)


def v5_cipher() -> BlockCipher:
    """Plain AES-128 with V5_KEY (Rijndael, no tweaks), shared instance."""
    return _v5_cipher(ACCELERATED)


def v6_cipher() -> BlockCipher:
    """AES-128 with V6_KEY and the §12.1 modified schedule (encrypt and decrypt), shared."""
    return _v6_cipher(ACCELERATED)


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


def v6_hmac_key(filetime: int, slot_offset: int = 0) -> bytes:
    """16-byte v6 HMAC key for a FILETIME (§12.6); slot_offset t adds t·C1 like vlmcs does."""
    if not 0 <= filetime <= _U64:
        raise LocalProtocolError(f"FILETIME {filetime} is not an unsigned 64-bit value")
    return _v6_slot_key(filetime // _TIME_C1, slot_offset)


# A key holds for a time slot of about 4 hours: a host's answers reuse a handful of them.
@functools.lru_cache(maxsize=64)
def _v6_slot_key(slot_number: int, slot_offset: int) -> bytes:
    # vlmcs's ±1 tolerance adds t·C1 to the slot value (not t·C2); we mirror it for interop.
    slot = (slot_number * _TIME_C2 + _TIME_C3 + slot_offset * _TIME_C1) & _U64
    return sha256(slot.to_bytes(8, "little"))[16:]


def v6_hmac(filetime: int, message: bytes, slot_offset: int = 0) -> bytes:
    """Truncated v6 HMAC field: last 16 bytes of HMAC-SHA256 over R6 up to XorSalts (§12.6)."""
    return hmac.digest(v6_hmac_key(filetime, slot_offset), message, "sha256")[16:]
