"""Tests of kmsgate.protocol.crypto against FIPS-197, spec Appendix A and captured vectors."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsgate.protocol import crypto, rijndael
from kmsgate.protocol.errors import LocalProtocolError, ProtocolError

pytestmark = pytest.mark.integration

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
EXT_BUILT = importlib.util.find_spec("kmsgate.protocol._cipher") is not None
HAVE_C = rijndael._ACCEL is not None
NO_C_REASON = (
    "C extension disabled by KMSGATE_PURE_PYTHON_CIPHER=1"
    if EXT_BUILT
    else "C extension kmsgate.protocol._cipher not built (pip install -e . builds it)"
)

# Hypothesis re-runs the body with the same function-scoped backend fixture, which is intended.
HYP = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

blocks = st.binary(min_size=16, max_size=16)
cbc_data = st.integers(min_value=0, max_value=24).flatmap(
    lambda n: st.binary(min_size=16 * n, max_size=16 * n)
)


def _c_rounds(aesni: bool) -> Iterator[None]:
    """Run the C extension's rounds on AES-NI or on its tables for the duration."""
    module = rijndael._ACCEL
    assert module is not None
    before = module.backend() == "aes-ni"
    if module.use_aesni(aesni) != aesni:
        pytest.skip("this processor has no AES-NI")
    try:
        yield
    finally:
        module.use_aesni(before)


@pytest.fixture(
    params=[
        pytest.param((False, False), id="python"),
        pytest.param(
            (True, False), id="c-tables", marks=pytest.mark.skipif(not HAVE_C, reason=NO_C_REASON)
        ),
        pytest.param(
            (True, True), id="c-aes-ni", marks=pytest.mark.skipif(not HAVE_C, reason=NO_C_REASON)
        ),
    ]
)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Select the pure-Python rounds or the C ones (tables or AES-NI) as the default."""
    accelerated, aesni = request.param
    monkeypatch.setattr(rijndael, "ACCELERATED", accelerated)
    if not accelerated:
        yield False
        return
    for _ in _c_rounds(aesni):
        yield True


def _aes_lib_encrypt(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return enc.update(block) + enc.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def _exchange_pdus(name: str) -> tuple[bytes, bytes]:
    vec = _load(name)
    ex = vec["exchanges"][0]
    pdus = {p["index"]: p for p in vec["pdus"]}
    return bytes.fromhex(pdus[ex["request_pdu"]]["hex"]), bytes.fromhex(
        pdus[ex["answer_pdu"]]["hex"]
    )


def _ndr32_request_message(pdu: bytes) -> bytes:
    # 16-byte header, alloc_hint/ctx/opnum (8), NDR32 size + conformance (8), then the message.
    assert pdu[2] == 0 and pdu[20:22] == b"\x00\x00", "expected an NDR32 request on ctx 0"
    size, conformance = struct.unpack_from("<II", pdu, 24)
    assert size == conformance == len(pdu) - 32
    return pdu[32:]


def _ndr32_response_message(pdu: bytes) -> bytes:
    # 24 bytes of header, then size, referent 0x20000 and conformance (12), then the message.
    assert pdu[2] == 2 and pdu[20:22] == b"\x00\x00", "expected an NDR32 response on ctx 0"
    size, referent, conformance = struct.unpack_from("<III", pdu, 24)
    assert referent == 0x20000 and size == conformance
    return pdu[36 : 36 + size]


# --- backend selection ----------------------------------------------------------------------


def test_backend_selection_is_effective(impl: bool) -> None:
    assert rijndael.ACCELERATED is impl
    cipher = crypto.RijndaelCipher(crypto.V4_KEY)
    assert isinstance(cipher, crypto.RijndaelCipher)
    assert cipher.accelerated is impl
    for singleton in (crypto.v4_cipher(), crypto.v5_cipher(), crypto.v6_cipher()):
        assert isinstance(singleton, crypto.RijndaelCipher)
        assert singleton.accelerated is impl


def test_singletons_are_cached(impl: bool) -> None:
    assert crypto.v4_cipher() is crypto.v4_cipher()
    assert crypto.v5_cipher() is crypto.v5_cipher()
    assert crypto.v6_cipher() is crypto.v6_cipher()
    assert crypto.cipher_for_version(5) is crypto.v5_cipher()
    assert crypto.cipher_for_version(6) is crypto.v6_cipher()


@pytest.mark.parametrize("value", ["1", None])
def test_env_var_forces_pure_python(value: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KMSGATE_PURE_PYTHON_CIPHER"}
    if value is not None:
        env["KMSGATE_PURE_PYTHON_CIPHER"] = value
    code = "from kmsgate.protocol import crypto; print(crypto.ACCELERATED)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ("False" if value == "1" else str(EXT_BUILT))


# --- FIPS-197 -------------------------------------------------------------------------------

FIPS_PT = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.mark.parametrize(
    ("key_len", "ciphertext"),
    [
        (16, "69c4e0d86a7b0430d8cdb78070b4c55a"),  # FIPS-197 C.1
        (24, "dda97ca4864cdfe06eaf70a0ec0d7191"),  # C.2
        (32, "8ea2b7ca516745bfeafc49904b496089"),  # C.3
    ],
)
def test_fips197_appendix_c(impl: bool, key_len: int, ciphertext: str) -> None:
    cipher = crypto.RijndaelCipher(bytes(range(key_len)))
    assert cipher.encrypt_block(FIPS_PT).hex() == ciphertext
    assert cipher.decrypt_block(bytes.fromhex(ciphertext)) == FIPS_PT


@pytest.mark.parametrize(
    ("key", "last_round_key"),
    [
        # FIPS-197 Appendix A.1-A.3: the last four words of the expansion.
        ("2b7e151628aed2a6abf7158809cf4f3c", "d014f9a8c9ee2589e13f0cc8b6630ca6"),
        (
            "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
            "e98ba06f448c773c8ecc720401002202",
        ),
        (
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            "fe4890d1e6188d0b046df344706c631e",
        ),
    ],
)
def test_fips197_key_expansion(key: str, last_round_key: str) -> None:
    schedule = crypto.expand_key(bytes.fromhex(key))
    assert len(schedule) == 16 * (len(key) // 8 + 7)
    assert schedule[: len(key) // 2] == bytes.fromhex(key)
    assert schedule[-16:].hex() == last_round_key


@HYP
@given(block=blocks)
def test_v5_key_matches_library_aes(impl: bool, block: bytes) -> None:
    expected = _aes_lib_encrypt(crypto.V5_KEY, block)
    ours = crypto.RijndaelCipher(crypto.V5_KEY)
    assert ours.encrypt_block(block) == expected
    assert ours.decrypt_block(expected) == block
    assert crypto.v5_cipher().encrypt_block(block) == expected
    assert crypto.v5_cipher().decrypt_block(expected) == block


@HYP
@given(
    key=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    iv=blocks,
    data=cbc_data,
)
def test_random_aes_keys_match_library_cbc(impl: bool, key: bytes, iv: bytes, data: bytes) -> None:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    expected = enc.update(data) + enc.finalize()
    ours = crypto.RijndaelCipher(key)
    assert ours.cbc_encrypt(iv, data) == expected
    assert ours.cbc_decrypt(iv, expected) == data


# --- spec Appendix A.1 ----------------------------------------------------------------------

ZERO = bytes(16)
COUNT = bytes(range(16))


KNOWN_ANSWERS: list[tuple[str, Callable[[], bytes], str]] = [
    (
        "E(K4, 0)",
        lambda: crypto.v4_cipher().encrypt_block(ZERO),
        "933030f10e2e7782b80915d5778a4957",
    ),
    (
        "E(K4, 00..0f)",
        lambda: crypto.v4_cipher().encrypt_block(COUNT),
        "28916e4a0ee525b42cf393cae0f4dc9a",
    ),
    (
        "K4 round key 11",
        lambda: crypto.expand_key(crypto.V4_KEY)[176:192],
        "4a7d08d621ed8fd1454df13ba968579d",
    ),
    ("v4 MAC of empty", lambda: crypto.kms_v4_mac(b""), "d144963029e2bd12f9970c9f52b27f09"),
    ("v4 MAC of 16 zeros", lambda: crypto.kms_v4_mac(ZERO), "2a090d7c1155251ab86445447d060335"),
    (
        "AES E(K5, 0)",
        lambda: crypto.v5_cipher().encrypt_block(ZERO),
        "ec7c7e75b1923978eac4b2d2260235d5",
    ),
    (
        "RijndaelCipher E(K5, 0)",
        lambda: crypto.RijndaelCipher(crypto.V5_KEY).encrypt_block(ZERO),
        "ec7c7e75b1923978eac4b2d2260235d5",
    ),
    (
        "v6 E(K6, 0)",
        lambda: crypto.v6_cipher().encrypt_block(ZERO),
        "8ca59de0c483c04aa7026a22d6dd208e",
    ),
    (
        "v6 D(K6, 0)",
        lambda: crypto.v6_cipher().decrypt_block(ZERO),
        "8a1a5b385caaff8dd0ce3913d2cbc26f",
    ),
    (
        "v6 E(K6, 00..0f)",
        lambda: crypto.v6_cipher().encrypt_block(COUNT),
        "ca89ca11b2c4e77a94e806af17136b38",
    ),
    (
        "plain AES E(K6, 0)",
        lambda: crypto.RijndaelCipher(crypto.V6_KEY).encrypt_block(ZERO),
        "b4c3c015f6fb320c9b64aecd52fa58c8",
    ),
    (
        "v6 via RijndaelCipher(tweaks)",
        lambda: crypto.RijndaelCipher(
            crypto.V6_KEY, round_key_tweaks={64: 0x73, 96: 0x09, 128: 0xE4}
        ).decrypt_block(ZERO),
        "8a1a5b385caaff8dd0ce3913d2cbc26f",
    ),
]


@pytest.mark.parametrize(
    ("name", "compute", "expected"),
    KNOWN_ANSWERS,
    ids=[name for name, _, _ in KNOWN_ANSWERS],
)
def test_appendix_a1_known_answers(
    impl: bool, name: str, compute: Callable[[], bytes], expected: str
) -> None:
    assert compute().hex() == expected, name


def test_appendix_a1_v4_schedule_shape() -> None:
    cipher = crypto.RijndaelCipher(crypto.V4_KEY)
    assert isinstance(cipher, crypto.RijndaelCipher)
    assert cipher.rounds == 11
    assert len(cipher.round_keys) == 48 * 4


def test_appendix_a1_v6_round_keys() -> None:
    plain = crypto.expand_key(crypto.V6_KEY)
    tweaked = crypto.expand_key(crypto.V6_KEY, crypto.V6_ROUND_KEY_TWEAKS)
    before = {
        4: "7630e12e111e2b4d3f6a5901edca6094",
        6: "6adec9456920217355b4904484ea41e7",
        8: "0bc82943cfb5552a5e7cb9074b5f14cd",
    }
    after_first = {4: 0x05, 6: 0x63, 8: 0xEF}
    for r, hexkey in before.items():
        assert plain[16 * r : 16 * r + 16].hex() == hexkey
        assert tweaked[16 * r] == after_first[r]
        assert tweaked[16 * r + 1 : 16 * r + 16] == plain[16 * r + 1 : 16 * r + 16]
    changed = [i for i in range(len(plain)) if plain[i] != tweaked[i]]
    assert changed == [64, 96, 128]
    v6 = crypto.v6_cipher()
    assert isinstance(v6, crypto.RijndaelCipher)
    assert v6.round_keys == tweaked


# --- round trips and cross-backend equality -------------------------------------------------


def _all_ciphers() -> list[crypto.BlockCipher]:
    return [
        crypto.v4_cipher(),
        crypto.v5_cipher(),
        crypto.v6_cipher(),
        crypto.RijndaelCipher(bytes(range(28))),  # Nk = 7, the only size without another check
        crypto.RijndaelCipher(bytes(range(32)), round_key_tweaks={17: 0x5A, 239: 0xFF}),
    ]


@HYP
@given(block=blocks)
def test_v6_block_round_trip(impl: bool, block: bytes) -> None:
    v6 = crypto.v6_cipher()
    ct = v6.encrypt_block(block)
    assert v6.decrypt_block(ct) == block
    # The tweak must matter: a plain AES-128 decryption must not recover the block.
    assert _aes_lib_encrypt(crypto.V6_KEY, block) != ct


@HYP
@given(iv=blocks, data=cbc_data)
def test_cbc_round_trips(impl: bool, iv: bytes, data: bytes) -> None:
    for cipher in _all_ciphers():
        ct = cipher.cbc_encrypt(iv, data)
        assert len(ct) == len(data)
        assert cipher.cbc_decrypt(iv, ct) == data


@HYP
@given(iv=blocks, data=cbc_data.filter(len))
def test_cbc_matches_block_chaining(impl: bool, iv: bytes, data: bytes) -> None:
    for cipher in _all_ciphers():
        prev, expected = iv, b""
        for i in range(0, len(data), 16):
            prev = cipher.encrypt_block(_xor(prev, data[i : i + 16]))
            expected += prev
        assert cipher.cbc_encrypt(iv, data) == expected


@pytest.fixture(params=[pytest.param(False, id="tables"), pytest.param(True, id="aes-ni")])
def c_rounds(request: pytest.FixtureRequest) -> Iterator[None]:
    """The C extension's table rounds, then its AES-NI ones."""
    if not HAVE_C:
        pytest.skip(NO_C_REASON)
    yield from _c_rounds(request.param)


# Any key length (AES-NI runs v4's 11 rounds as well), any round-key tweak, any length.
@settings(HYP, max_examples=100)
@given(
    key=st.sampled_from([16, 20, 24, 28, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    tweak=st.dictionaries(st.integers(0, 175), st.integers(0, 255), max_size=4),
    iv=blocks,
    data=cbc_data,
)
def test_c_and_python_agree(
    c_rounds: None, key: bytes, tweak: dict[int, int], iv: bytes, data: bytes
) -> None:
    py = crypto.RijndaelCipher(key, tweak, accelerated=False)
    c = crypto.RijndaelCipher(key, tweak, accelerated=True)
    assert py.cbc_encrypt(iv, data) == c.cbc_encrypt(iv, data)
    assert py.cbc_decrypt(iv, data) == c.cbc_decrypt(iv, data)
    if data:
        assert py.encrypt_block(data[:16]) == c.encrypt_block(data[:16])
        assert py.decrypt_block(data[:16]) == c.decrypt_block(data[:16])


@pytest.mark.parametrize("aesni", [False, True], ids=["tables", "aes-ni"])
def test_the_start_up_line_names_the_rounds_in_use(aesni: bool) -> None:
    if not HAVE_C:
        pytest.skip(NO_C_REASON)
    for _ in _c_rounds(aesni):
        expected = "aes-ni" if aesni else "tables"
        assert rijndael._load_accelerator()[1] == f"C accelerator (abi3, {expected} rounds)"


@pytest.mark.skipif(not HAVE_C, reason=NO_C_REASON)
def test_c_extension_rejects_bad_arguments() -> None:
    mod = rijndael._ACCEL
    assert mod is not None
    rk = crypto.expand_key(crypto.V5_KEY)
    with pytest.raises(ValueError, match="round keys"):
        mod.cbc_encrypt(rk[:-1], 10, ZERO, ZERO)
    with pytest.raises(ValueError, match="round keys"):
        mod.cbc_encrypt(rk, 11, ZERO, ZERO)
    with pytest.raises(ValueError, match="nrounds"):
        mod.cbc_decrypt(rk, 15, ZERO, ZERO)
    with pytest.raises(ValueError, match="nrounds"):
        mod.cbc_decrypt(rk, 0, ZERO, ZERO)
    with pytest.raises(ValueError, match="IV"):
        mod.cbc_encrypt(rk, 10, ZERO[:15], ZERO)
    with pytest.raises(ValueError, match="multiple of 16"):
        mod.cbc_decrypt(rk, 10, ZERO, ZERO + b"\x00")
    with pytest.raises(TypeError):
        mod.cbc_encrypt("not bytes", 10, ZERO, ZERO)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mod.cbc_decrypt(rk, 10, ZERO, "0123456789abcdef")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mod.cbc_decrypt(rk, "10", ZERO, ZERO)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="4 arguments"):
        mod.cbc_encrypt(rk, 10, ZERO)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="4 arguments"):
        mod.cbc_decrypt(rk, 10, ZERO, ZERO, ZERO)  # type: ignore[call-arg]
    # Any contiguous buffer serves, as bytes would; failed calls above held none of them.
    data = bytes(range(48))
    for kind in (bytearray, memoryview):
        assert mod.cbc_encrypt(kind(rk), 10, kind(ZERO), kind(data)) == mod.cbc_encrypt(
            rk, 10, ZERO, data
        )
    held = bytearray(data)
    with pytest.raises(ValueError, match="IV"):
        mod.cbc_decrypt(rk, 10, ZERO[:15], held)
    held += b"still resizable: no buffer of it was kept"


# --- argument validation --------------------------------------------------------------------


@pytest.mark.parametrize("key_len", [0, 15, 17, 21, 33])
def test_bad_key_length(impl: bool, key_len: int) -> None:
    with pytest.raises(LocalProtocolError, match="key"):
        crypto.RijndaelCipher(bytes(key_len))


@pytest.mark.parametrize("tweaks", [{176: 1}, {-1: 1}, {0: 256}, {0: -1}])
def test_bad_tweaks(tweaks: dict[int, int]) -> None:
    with pytest.raises(LocalProtocolError, match="tweak"):
        crypto.RijndaelCipher(crypto.V5_KEY, round_key_tweaks=tweaks)


def test_bad_lengths(impl: bool) -> None:
    for cipher in _all_ciphers():
        for bad in (b"", bytes(15), bytes(17), bytes(32)):
            with pytest.raises(LocalProtocolError, match="block must be 16 bytes"):
                cipher.encrypt_block(bad)
            with pytest.raises(LocalProtocolError, match="block must be 16 bytes"):
                cipher.decrypt_block(bad)
        for op in (cipher.cbc_encrypt, cipher.cbc_decrypt):
            with pytest.raises(LocalProtocolError, match="IV must be 16 bytes"):
                op(bytes(8), bytes(16))
            with pytest.raises(LocalProtocolError, match="multiple of 16"):
                op(ZERO, bytes(20))
            assert op(ZERO, b"") == b""


@pytest.mark.parametrize("major", [0, 4, 7, -6])
def test_cipher_for_version_rejects(major: int) -> None:
    with pytest.raises(LocalProtocolError, match=str(major)):
        crypto.cipher_for_version(major)


def test_accelerated_request_without_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rijndael, "_ACCEL", None)
    with pytest.raises(LocalProtocolError, match="not available"):
        crypto.RijndaelCipher(crypto.V5_KEY, accelerated=True)


# --- padding, hashes ------------------------------------------------------------------------


@given(data=st.binary(max_size=80))
def test_pkcs7_round_trip(data: bytes) -> None:
    padded = crypto.pkcs7_pad(data)
    n = len(padded) - len(data)
    assert 1 <= n <= 16 and len(padded) % 16 == 0
    assert padded[len(data) :] == bytes([n]) * n
    assert crypto.pkcs7_unpad(padded) == data


def test_pkcs7_pad_full_block() -> None:
    assert crypto.pkcs7_pad(bytes(16)) == bytes(16) + b"\x10" * 16
    assert crypto.pkcs7_pad(bytes(236))[-4:] == b"\x04" * 4


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "non-empty multiple of 16"),
        (b"\x01" * 15, "non-empty multiple of 16"),
        (bytes(16), "0x00 is not a pad length"),
        (b"\x11" * 16, "0x11 is not a pad length"),
        (bytes(14) + b"\x01\x02", "last 2 bytes are not all 0x02"),
        (bytes(12) + b"\x04\x04\x03\x04", "last 4 bytes"),
    ],
)
def test_pkcs7_unpad_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        crypto.pkcs7_unpad(data)


def test_sha256_known_answer() -> None:
    assert crypto.sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# --- v6 HMAC (Appendix A.2) -----------------------------------------------------------------

A2_TIME = 134398385640000000


def test_v6_hmac_key_appendix_a2() -> None:
    assert crypto.v6_hmac_key(A2_TIME).hex() == "50fd4b414706fc8c05c8c2bdb457a067"
    slot = bytes.fromhex("a5f60f829b371933")
    assert crypto.sha256(slot)[16:] == crypto.v6_hmac_key(A2_TIME)


@pytest.mark.parametrize("offset", [-1, 1, 2])
def test_v6_hmac_key_slot_offset(offset: int) -> None:
    slot = (0x3319379B820FF6A5 + offset * 0x00000022816889BD) % 2**64
    expected = crypto.sha256(slot.to_bytes(8, "little"))[16:]
    assert crypto.v6_hmac_key(A2_TIME, offset) == expected
    assert expected != crypto.v6_hmac_key(A2_TIME)


def test_v6_hmac_key_wraps_modulo_2_64() -> None:
    top = 2**64 - 1
    slot = ((top // 0x00000022816889BD) * 0x000000208CBAB5ED + 0x3156CD5AC628477A) % 2**64
    assert crypto.v6_hmac_key(top) == crypto.sha256(slot.to_bytes(8, "little"))[16:]
    for bad in (-1, 2**64):
        with pytest.raises(LocalProtocolError, match="FILETIME"):
            crypto.v6_hmac_key(bad)


def test_v6_exchange_appendix_a2(impl: bool) -> None:
    request_pdu, response_pdu = _exchange_pdus("vlmcsd_v6_server2019dc.json")
    request = _ndr32_request_message(request_pdu)
    response = _ndr32_response_message(response_pdu)
    v6 = crypto.v6_cipher()
    assert len(request) == 260 and len(response) == 260
    assert request[:4] == response[:4] == bytes.fromhex("00000600")

    # Request (§12.3): S = D(IV); the rest decrypts to the base request and 04040404.
    iv = request[4:20]
    assert iv.hex() == "63a5f8b151169a1abca4804782699a75"
    salt = v6.decrypt_block(iv)
    assert salt.hex() == "956bdc560a6c5698b8ed0b4603fb480e"
    stream = v6.cbc_decrypt(bytes(16), request[4:])
    assert stream[:16] == salt
    base = v6.cbc_decrypt(iv, request[20:])
    assert stream[16:] == base
    assert base[-4:] == b"\x04\x04\x04\x04"
    assert crypto.pkcs7_unpad(base)[:4] == bytes.fromhex("00000600")
    assert base[84:92].hex() == "004a75a29e7add01"
    # Plain AES-128 with the same key does not yield valid padding: the tweak is required.
    plain = crypto.RijndaelCipher(crypto.V6_KEY).cbc_decrypt(iv, request[20:])
    assert plain[-4:] != b"\x04\x04\x04\x04"

    # Response (§12.5, §12.6).
    assert response[4:20].hex() == "c5ac6b9b9b5448a2a229476d38ebe8a7"
    r6 = crypto.pkcs7_unpad(v6.cbc_decrypt(bytes(16), response[4:]))
    assert len(r6) == 248
    assert r6[:16].hex() == "48af752b0b13bbe718b6f4a4651a7632"
    p = struct.unpack_from("<I", r6, 16 + 4)[0]
    assert p == 100
    filetime = struct.unpack_from("<Q", r6, 16 + 24 + p)[0]
    assert filetime == A2_TIME
    xor_salt, digest = r6[60 + p : 76 + p], r6[76 + p : 108 + p]
    assert xor_salt.hex() == "fb81638ae0ff21fc4958b5ac92bca94c"
    rnd = _xor(xor_salt, salt)
    assert rnd.hex() == "6eeabfdcea937764f1b5beea9147e142"
    assert crypto.sha256(rnd) == digest
    assert r6[108 + p : 116 + p].hex() == "3a1c049600b60076"
    assert r6[116 + p : 132 + p] == salt
    field = r6[132 + p : 148 + p]
    assert field.hex() == "5a6b03d92ce835b2be8d2cfba062c689"
    assert crypto.v6_hmac(filetime, r6[:232]) == field
    assert crypto.v6_hmac(filetime, r6[:232], 1) != field
    assert crypto.v6_hmac(filetime, r6[:231]) != field


# --- v5 (§12.2-12.5) ------------------------------------------------------------------------


def test_v5_exchange(impl: bool) -> None:
    request_pdu, response_pdu = _exchange_pdus("vlmcsd_v5_server2012dc.json")
    request = _ndr32_request_message(request_pdu)
    response = _ndr32_response_message(response_pdu)
    v5 = crypto.cipher_for_version(5)
    assert request[:4] == response[:4] == bytes.fromhex("00000500")
    base = v5.cbc_decrypt(request[4:20], request[20:260])
    assert base[-4:] == bytes.fromhex("04040404")
    assert base[:4] == bytes.fromhex("00000500")
    assert crypto.pkcs7_unpad(base)[:4] == base[:4] and len(crypto.pkcs7_unpad(base)) == 236
    # The same decryption through our own Rijndael must agree with the library.
    assert crypto.RijndaelCipher(crypto.V5_KEY).cbc_decrypt(request[4:20], request[20:260]) == base
    # v5 response: ResponseIV = S = D(request IV), so the wire IVs are equal.
    salt = v5.decrypt_block(request[4:20])
    assert response[4:20] == request[4:20]
    r5 = crypto.pkcs7_unpad(v5.cbc_decrypt(bytes(16), response[4:]))
    assert r5[:16] == salt
    p = struct.unpack_from("<I", r5, 20)[0]
    assert len(r5) == 108 + p
    rnd = _xor(r5[60 + p : 76 + p], salt)
    assert crypto.sha256(rnd) == r5[76 + p : 108 + p]


# --- v4 MAC (Appendix A.3) ------------------------------------------------------------------


def test_v4_mac_appendix_a3(impl: bool) -> None:
    request_pdu, response_pdu = _exchange_pdus("vlmcsd_v4_vista_business.json")
    request = _ndr32_request_message(request_pdu)
    assert len(request) == 252
    assert request[:16].hex() == "00000400010000000100000080f40300"
    assert request[236:].hex() == "e5c58e81a96d1f3f57ed2845c51a12dd"
    assert crypto.kms_v4_mac(request[:236]) == request[236:]
    assert crypto.kms_v4_mac(request[:235]) != request[236:]

    response = _ndr32_response_message(response_pdu)
    assert len(response) == 160
    assert response[144:].hex() == "c22f85803046af713e38f978da87a784"
    assert crypto.kms_v4_mac(response[:144]) == response[144:]


def test_v4_mac_is_cbc_mac_with_0x80_padding(impl: bool) -> None:
    v4 = crypto.v4_cipher()
    for n in (0, 1, 15, 16, 17, 236):
        msg = bytes(range(n))
        padded = msg + b"\x80" + bytes(-(n + 1) % 16)
        assert crypto.kms_v4_mac(msg) == v4.cbc_encrypt(bytes(16), padded)[-16:]
    # An explicit 0x80 byte must not collide with the implicit one.
    assert crypto.kms_v4_mac(b"") != crypto.kms_v4_mac(b"\x80" + bytes(15))


def test_missing_extension_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> object:
        raise ImportError(name)

    monkeypatch.delenv("KMSGATE_PURE_PYTHON_CIPHER", raising=False)
    monkeypatch.setattr(importlib, "import_module", missing)
    assert rijndael._load_accelerator() == (None, "pure Python (C extension not built)")


@settings(max_examples=200, deadline=None)
@given(
    filetime=st.integers(0, (1 << 64) - 1),
    message=st.binary(max_size=300),
    offset=st.sampled_from([-1, 0, 1]),
)
def test_v6_hmac_is_hmac_sha256_under_the_slot_key(
    filetime: int, message: bytes, offset: int
) -> None:
    # The precomputed inner and outer hashes must give exactly the library's HMAC.
    expected = hmac.digest(crypto.v6_hmac_key(filetime, offset), message, "sha256")[16:]
    assert crypto.v6_hmac(filetime, message, offset) == expected
    assert crypto.v6_hmac(filetime, message, offset) == expected  # the cached start is intact


def test_v6_hmac_refuses_a_filetime_out_of_range() -> None:
    with pytest.raises(LocalProtocolError):
        crypto.v6_hmac(1 << 64, b"")


# --- a v5/v6 response sealed in one piece ---------------------------------------------------

FILETIMES = st.integers(min_value=0, max_value=2**64 - 1)


def _sealed_by_definition(
    major: int, head: bytes, base: bytes, rnd: bytes, salt: bytes, tail: bytes, when: int
) -> bytes:
    """§11.4 / §12.5 spelled out with the standard library's SHA-256 and HMAC."""
    plain = head + base + _xor(rnd, salt) + hashlib.sha256(rnd).digest() + tail
    if major == 6:
        plain += hmac.new(crypto.v6_hmac_key(when), plain, "sha256").digest()[16:]
    reference = crypto.RijndaelCipher(
        crypto.V6_KEY if major == 6 else crypto.V5_KEY,
        crypto.V6_ROUND_KEY_TWEAKS if major == 6 else None,
        accelerated=False,
    )
    return reference.cbc_encrypt(ZERO, crypto.pkcs7_pad(plain))


@settings(HYP)
@given(
    major=st.sampled_from([5, 6]),
    head=blocks,
    base=st.binary(max_size=200),
    rnd=blocks,
    salt=blocks,
    tail=st.binary(max_size=40),
    when=FILETIMES,
)
def test_a_sealed_response_is_its_definition(
    impl: bool,
    major: int,
    head: bytes,
    base: bytes,
    rnd: bytes,
    salt: bytes,
    tail: bytes,
    when: int,
) -> None:
    sealed = crypto.seal_response(major, head, base, rnd, salt, tail, when)
    assert sealed == _sealed_by_definition(major, head, base, rnd, salt, tail, when)


def test_the_kept_hmac_key_follows_the_time_slot(impl: bool) -> None:
    # The C seal keeps the last slot's HMAC starts: going back to an earlier slot must not
    # reuse the later one's.
    slot = 0x00000022816889BD
    times = [A2_TIME, A2_TIME + slot, A2_TIME, A2_TIME + 5 * slot, A2_TIME + 5 * slot]
    for when in times:
        parts = (6, COUNT, b"base" * 20, bytes(range(16, 32)), ZERO, b"hwid" * 6)
        assert crypto.seal_response(*parts, when) == _sealed_by_definition(*parts, when)


@pytest.mark.skipif(not HAVE_C, reason=NO_C_REASON)
def test_this_build_seals_in_c() -> None:
    # scripts/test installs OpenSSL's headers (libssl-dev): a build that quietly lost the
    # one-call seal would still pass every other test, only slower.
    if not Path("/usr/include/openssl/evp.h").exists():
        pytest.skip("OpenSSL headers are not installed: the cipher was built without seal")
    assert crypto.C_SEAL


@pytest.mark.skipif(crypto._C_SEAL is None, reason="the C cipher was built without seal")
def test_the_c_seal_rejects_bad_arguments() -> None:
    seal = crypto._C_SEAL
    assert seal is not None
    rk = crypto.v6_cipher().round_keys
    good = (rk, 10, ZERO, b"base", ZERO, ZERO, b"", None)
    assert len(seal(*good)) == 80  # 16 + 4 + 16 + 32 bytes, padded
    for index, bad, error, message in [
        (0, rk[:-1], ValueError, "round keys must be 176 bytes"),
        (1, 15, ValueError, "nrounds"),
        (1, "10", TypeError, "integer"),
        (2, ZERO[:15], ValueError, "head must be 16 bytes"),
        (3, bytearray(b"base"), TypeError, "base must be bytes"),
        (4, ZERO + b"\x00", ValueError, "rnd must be 16 bytes"),
        (5, b"", ValueError, "salt must be 16 bytes"),
        (6, None, TypeError, "tail must be bytes"),
        (7, ZERO[:15], ValueError, "HMAC key must be 16 bytes"),
    ]:
        args = list(good)
        args[index] = bad
        with pytest.raises(error, match=message):
            seal(*args)
    with pytest.raises(TypeError, match="8 arguments"):
        seal(*good[:7])  # type: ignore[call-arg]


def test_v6_hmac_key_follows_the_slot_of_each_time_asked() -> None:
    # The current slot's key is kept: times that come back to an earlier slot, or offsets
    # asked between, must still get their own slot's key.
    slot_ticks = 0x00000022816889BD
    times = [A2_TIME, A2_TIME + slot_ticks, A2_TIME, A2_TIME + 3 * slot_ticks, A2_TIME + 1]
    for when in times:
        slot = ((when // slot_ticks) * 0x000000208CBAB5ED + 0x3156CD5AC628477A) % 2**64
        assert crypto.v6_hmac_key(when) == crypto.sha256(slot.to_bytes(8, "little"))[16:]
        assert crypto.v6_hmac_key(when, 1) != crypto.v6_hmac_key(when)
