"""Rijndael with a 128-bit block (and 128/160/192/256-bit keys), CBC without padding.

The round keys may be tweaked after expansion (KMS v6 does). Pure computation: no
randomness, no clock, no I/O. The optional C extension ``kmsgate.protocol._cipher`` runs the
block rounds; key schedules always come from Python. ACCELERATED is the default backend of
every RijndaelCipher (tests and benchmarks flip it here).
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Final, Protocol, cast

from kmsgate._native import optional_extension
from kmsgate.protocol.errors import LocalProtocolError

BLOCK_SIZE: Final = 16
_ZERO_IV: Final = bytes(BLOCK_SIZE)
_WORDS4: Final = struct.Struct(">4I")


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
_S24: Final = tuple(s << 24 for s in _SBOX)
_S16: Final = tuple(s << 16 for s in _SBOX)
_S8: Final = tuple(s << 8 for s in _SBOX)
_S0: Final = _SBOX
_IS24: Final = tuple(s << 24 for s in _INV_SBOX)
_IS16: Final = tuple(s << 16 for s in _INV_SBOX)
_IS8: Final = tuple(s << 8 for s in _INV_SBOX)
_IS0: Final = _INV_SBOX


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

    def use_aesni(self, flag: bool, /) -> bool: ...

    def backend(self) -> str: ...


def _load_accelerator() -> tuple[_CipherModule | None, str]:
    """The C extension unless missing or disabled by KMSGATE_PURE_PYTHON_CIPHER=1, and why."""
    module, build = optional_extension("kmsgate.protocol._cipher", "CIPHER")
    if module is None:
        return None, f"pure Python ({build})"
    accelerator = cast(_CipherModule, module)
    return accelerator, f"C accelerator ({build}, {accelerator.backend()} rounds)"


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
