"""KMS request/response messages: codecs, v4 MAC, v5/v6 encryption and strict verification."""

from __future__ import annotations

import dataclasses
import random
import struct
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.protocol import crypto, ndr, rpc
from kmsgate.protocol.errors import KmsMessageError, LocalProtocolError, VerificationError
from kmsgate.protocol.messages import (
    DecodedRequest,
    KmsRequest,
    KmsResponse,
    RandomBytes,
    decode_request,
    encode_request,
    encode_response,
)
from kmsgate.protocol.verification import VerifiedResponse, verify_response
from tests import vectors

HYP = settings(max_examples=150, deadline=None)
NOW = 134398385640000000  # 2026-11-22, the capture day
EPID = "03612-00206-556-123727-03-1033-17763.0000-2972018"  # 49 chars, P = 100
HWID = bytes.fromhex("3a1c049600b60076")
IV = bytes.fromhex("63a5f8b151169a1abca4804782699a75")
WINDOWS_APP = uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f")
SERVER_2019_KMS_ID = uuid.UUID("8449b1fb-f0ea-497a-99ab-66ca96e9a0f5")
CMID = uuid.UUID("5d7f9b13-c4e6-4081-8c2d-3e4f5a6b7c8d")
VERSIONS = (4, 5, 6)

u32 = st.integers(0, 0xFFFFFFFF)
any_uuid = st.binary(min_size=16, max_size=16).map(lambda raw: uuid.UUID(bytes=raw))
# Wire strings are NUL-terminated UTF-16: no NUL and no lone surrogates inside.
wire_text = st.text(st.characters(codec="utf-16", exclude_characters="\x00"))


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


machine_names = wire_text.filter(lambda s: _units(s) <= 63)
epids = wire_text.filter(lambda s: _units(s) <= 63)
kms_requests = st.builds(
    KmsRequest,
    major_version=st.integers(0, 0xFFFF),
    minor_version=st.integers(0, 0xFFFF),
    application_id=any_uuid,
    sku_id=any_uuid,
    kms_counted_id=any_uuid,
    client_machine_id=any_uuid,
    previous_client_machine_id=any_uuid,
    required_client_count=u32,
    request_time=st.integers(0, 2**64 - 1),
    machine_name=machine_names,
    is_client_vm=u32,
    license_status=u32,
    grace_time=u32,
)
kms_responses = st.builds(
    KmsResponse,
    major_version=st.integers(0, 0xFFFF),
    minor_version=st.integers(0, 0xFFFF),
    epid=epids,
    client_machine_id=any_uuid,
    response_time=st.integers(0, 2**64 - 1),
    current_client_count=u32,
    activation_interval=u32,
    renewal_interval=u32,
)


# --- builders shared with the session and fuzz tests -----------------------------------------


SERVER_2019_REQUEST = KmsRequest(
    major_version=6,
    application_id=WINDOWS_APP,
    sku_id=uuid.UUID("34e1ae55-27f8-4950-8877-7a03be5fb181"),
    kms_counted_id=SERVER_2019_KMS_ID,
    client_machine_id=CMID,
    required_client_count=5,
    request_time=NOW,
    machine_name="srv2019-dc.example.com",
)


def make_request(major: int = 6, **fields: Any) -> KmsRequest:
    """A plausible Windows Server 2019 request (spec Appendix A.2) of protocol `major`."""
    return dataclasses.replace(SERVER_2019_REQUEST, major_version=major, **fields)


def make_response(request: KmsRequest, **fields: Any) -> KmsResponse:
    """The response a vlmcsd-like host gives to `request`."""
    response = KmsResponse(
        major_version=request.major_version,
        minor_version=request.minor_version,
        epid=EPID,
        client_machine_id=request.client_machine_id,
        response_time=request.request_time,
        current_client_count=2 * request.required_client_count,
        activation_interval=120,
        renewal_interval=10080,
    )
    return dataclasses.replace(response, **fields)


def seeded(seed: int = 1) -> RandomBytes:
    return random.Random(seed).randbytes


def exchange(
    major: int, *, random_bytes: RandomBytes | None = None, **response_fields: Any
) -> tuple[bytes, bytes]:
    """(request message, response message) of one in-memory activation."""
    message = encode_request(make_request(major), IV)
    decoded = decode_request(message)
    response = make_response(decoded.request, **response_fields)
    reply = encode_response(decoded, response, random_bytes=random_bytes or seeded(), hwid=HWID)
    return message, reply


def decrypt_response(reply: bytes) -> bytes:
    """The v5/v6 plaintext R of a response message (padding removed)."""
    cipher = crypto.cipher_for_version(reply[2])
    return crypto.pkcs7_unpad(cipher.cbc_decrypt(bytes(16), reply[4:]))


def reencrypt(reply: bytes, mutate: Callable[[bytearray], None]) -> bytes:
    """Decrypt a v5/v6 response, let `mutate` edit the plaintext, encrypt it again."""
    plain = bytearray(decrypt_response(reply))
    mutate(plain)
    cipher = crypto.cipher_for_version(reply[2])
    return reply[:4] + cipher.cbc_encrypt(bytes(16), crypto.pkcs7_pad(bytes(plain)))


def resign_v6(plain: bytearray, slot_offset: int = 0) -> None:
    """Recompute the v6 HMAC (last 16 bytes of R6) for the current content."""
    plain[-16:] = crypto.v6_hmac(NOW, bytes(plain[:-16]), slot_offset)


def failed(verified: VerifiedResponse) -> set[str]:
    return {check.name for check in verified.checks if not check.passed}


def _salt(message: bytes) -> bytes:
    return crypto.cipher_for_version(message[2]).decrypt_block(message[4:20])


def _encrypt_request(outer: bytes, plaintext: bytes, iv: bytes = IV) -> bytes:
    """A v5/v6 request with arbitrary outer version and 240-byte plaintext."""
    cipher = crypto.cipher_for_version(outer[2])
    return outer + iv + cipher.cbc_encrypt(iv, plaintext)


# --- KmsRequest ------------------------------------------------------------------------------


@HYP
@given(kms_requests)
def test_base_request_round_trips(request: KmsRequest) -> None:
    raw = request.to_bytes()
    assert len(raw) == 236
    assert KmsRequest.from_bytes(raw) == request


def test_base_request_field_offsets_of_spec_section_9() -> None:
    request = make_request(6, is_client_vm=1, license_status=2, grace_time=43200)
    raw = request.to_bytes()
    assert raw[0:4] == b"\x00\x00\x06\x00"
    assert struct.unpack_from("<III", raw, 4) == (1, 2, 43200)
    assert raw[16:32] == WINDOWS_APP.bytes_le
    assert raw[48:64] == SERVER_2019_KMS_ID.bytes_le
    assert raw[64:80] == CMID.bytes_le
    assert struct.unpack_from("<IQ", raw, 80) == (5, NOW)
    assert raw[92:108] == bytes(16)
    assert raw[108:236] == "srv2019-dc.example.com".encode("utf-16-le").ljust(128, b"\x00")


def _with_stray_bytes(raw: bytes, name: str, stray: bytes) -> bytes:
    """A request as genuine Windows clients send it: bytes left after the name's NUL."""
    end = 108 + 2 * _units(name) + 2  # past the terminator
    return raw[:end] + stray[: 236 - end].ljust(236 - end, b"\xcc") + raw[236:]


@pytest.mark.parametrize(
    "stray",
    [b"\xcc" * 128, "OLD-NAME.corp.example".encode("utf-16-le"), b"\x41\x00\x00\xd8\xff"],
    ids=["fill_pattern", "previous_name", "lone_surrogate"],
)
def test_genuine_clients_stray_bytes_after_the_name_are_ignored(stray: bytes) -> None:
    name = "WIN11-LAB-07"
    raw = _with_stray_bytes(make_request(machine_name=name).to_bytes(), name, stray)
    assert raw[108 + 2 * len(name) : 110 + 2 * len(name)] == b"\x00\x00"
    assert raw[110 + 2 * len(name) : 236] != bytes(236 - 110 - 2 * len(name))
    assert KmsRequest.from_bytes(raw).machine_name == name


@given(st.binary(min_size=128, max_size=128))
def test_the_name_ends_at_its_first_nul_unit_only(field: bytes) -> None:
    """A zero byte pair straddling two units (odd offset) is text, not the terminator."""
    units = [field[i : i + 2] for i in range(0, 128, 2)]
    end = units.index(b"\x00\x00") if b"\x00\x00" in units else 64
    expected = b"".join(units[:end]).decode("utf-16-le", "replace")
    raw = make_request().to_bytes()
    assert KmsRequest.from_bytes(raw[:108] + field).machine_name == expected


@pytest.mark.parametrize(
    "field",
    [b"\x41\x00\x00\x00", b"\x00\x41\x00\x00\x42\x00", b"\x41\x00\x00\x41\x00\x00\x00\x00"],
    ids=["nul_after_one_unit", "odd_pair_then_unit", "odd_pairs_before_the_nul"],
)
def test_odd_offset_zero_pairs_do_not_end_the_name(field: bytes) -> None:
    raw = make_request().to_bytes()
    name = KmsRequest.from_bytes(raw[:108] + field.ljust(128, b"\x00")).machine_name
    end = next(i for i in range(0, len(field) + 2, 2) if field[i : i + 2] in (b"\x00\x00", b""))
    assert name == field[:end].decode("utf-16-le", "replace")


@pytest.mark.parametrize("version", [4, 5, 6])
def test_a_request_with_stray_name_bytes_is_answered_through_each_protocol(version: int) -> None:
    name = "DESKTOP-7Q2LK9M"
    request = make_request(version, machine_name=name)
    raw = _with_stray_bytes(request.to_bytes(), name, "STALE".encode("utf-16-le") * 20)
    stray_request = KmsRequest.from_bytes(raw)
    assert stray_request == request  # the fields are what the client meant
    message = encode_request(request, bytes(16))
    # The same request with the stray bytes in place of the zero fill, as a genuine client
    # sends it: v4 carries a MAC over them, v5/v6 encrypt them.
    if version == 4:
        patched = raw + crypto.kms_v4_mac(raw)
    else:
        cipher = crypto.cipher_for_version(version)
        patched = message[:20] + cipher.cbc_encrypt(bytes(16), crypto.pkcs7_pad(raw))
    assert patched != message
    decoded = decode_request(patched)
    assert decoded.mac_valid and decoded.request.machine_name == name


@pytest.mark.parametrize(
    "name",
    ["", "a" * 63, "ü" * 63, "数" * 63, "😀" * 31 + "a", "Rechner-Müller-Ωμέγα-数据.example"],
    ids=["empty", "ascii_63", "latin_63", "cjk_63", "astral_63_units", "mixed"],
)
def test_machine_names_up_to_63_units_round_trip(name: str) -> None:
    raw = make_request(machine_name=name).to_bytes()
    assert raw[108 + 2 * _units(name) :] == bytes(128 - 2 * _units(name))  # NUL-terminated
    assert KmsRequest.from_bytes(raw).machine_name == name


@pytest.mark.parametrize(
    "name", ["a" * 64, "数" * 64, "😀" * 32, "a" * 200], ids=["ascii", "cjk", "astral", "long"]
)
def test_machine_names_of_64_units_or_more_are_rejected(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        make_request(machine_name=name).to_bytes()


@pytest.mark.parametrize("length", [0, 100, 235])
def test_short_base_request_is_invalid_data(length: int) -> None:
    with pytest.raises(KmsMessageError) as info:
        KmsRequest.from_bytes(bytes(length))
    assert info.value.hresult == 0x8007000D


# --- KmsResponse -----------------------------------------------------------------------------


@HYP
@given(kms_responses)
def test_base_response_round_trips(response: KmsResponse) -> None:
    raw = response.to_bytes()
    pid_size = 2 * (_units(response.epid) + 1)
    assert len(raw) == 44 + pid_size
    assert struct.unpack_from("<I", raw, 4)[0] == pid_size
    assert KmsResponse.from_bytes(raw + b"trailing") == (response, len(raw))


@pytest.mark.parametrize(
    ("epid", "pid_size", "length"),
    [("05426-00206-557-488431-03-8251-9200.0000-2002025", 98, 142), (EPID, 100, 144)],
)
def test_base_response_sizes_of_spec_section_10(epid: str, pid_size: int, length: int) -> None:
    raw = make_response(make_request(), epid=epid).to_bytes()
    assert len(raw) == length
    assert struct.unpack_from("<I", raw, 4)[0] == pid_size
    assert raw[8 + pid_size - 2 : 8 + pid_size] == b"\x00\x00"
    assert raw[8 + pid_size : 24 + pid_size] == CMID.bytes_le
    assert struct.unpack_from("<QIII", raw, 24 + pid_size) == (NOW, 10, 120, 10080)


def test_epid_limit_is_128_bytes_with_the_nul() -> None:
    assert len(make_response(make_request(), epid="9" * 63).to_bytes()) == 44 + 128
    with pytest.raises(LocalProtocolError):
        make_response(make_request(), epid="9" * 64).to_bytes()


def _raw_response(pid_size: int, epid_bytes: bytes, tail: int = 36) -> bytes:
    return b"\x00\x00\x06\x00" + struct.pack("<I", pid_size) + epid_bytes + bytes(tail)


@pytest.mark.parametrize(
    ("raw", "check"),
    [
        (b"\x00\x00\x06\x00\x04\x00", "size"),
        (_raw_response(0, b""), "pid_length"),
        (_raw_response(3, b"a\x00\x00"), "pid_length"),
        (_raw_response(130, "9".encode("utf-16-le") * 64 + b"\x00\x00"), "pid_length"),
        (_raw_response(4, "ab".encode("utf-16-le")), "pid_length"),
        (_raw_response(6, b"a\x00\x00\x00b\x00"), "pid_length"),
        (_raw_response(6, "ab".encode("utf-16-le") + b"\x00\x00", tail=35), "size"),
    ],
    ids=["no_pid_size", "pid_0", "pid_odd", "pid_130", "no_nul", "nul_inside", "short_tail"],
)
def test_malformed_base_responses_raise_verification_error(raw: bytes, check: str) -> None:
    with pytest.raises(VerificationError) as info:
        KmsResponse.from_bytes(raw)
    assert info.value.check == check


# --- decode_request / encode_request --------------------------------------------------------


@pytest.mark.parametrize("major", VERSIONS)
def test_encoded_requests_decode_back(major: int) -> None:
    request = make_request(major)
    message = encode_request(request, IV)
    decoded = decode_request(message)
    assert decoded.request == request and decoded.major_version == major
    assert decoded.message == message and decoded.mac_valid
    if major == 4:
        assert len(message) == 252 and decoded.salt is None
        assert message == request.to_bytes() + crypto.kms_v4_mac(request.to_bytes())
    else:
        assert len(message) == 260 and message[:4] == bytes((0, 0, major, 0))
        assert message[4:20] == IV and decoded.salt == _salt(message)


def test_captured_v6_request_yields_the_salt_of_appendix_a2() -> None:
    conv = vectors.load("vlmcsd_v6_server2019dc")
    pdu = rpc.decode_pdu(conv.pdus[conv.exchanges[0].request_pdu][1] or b"")
    assert isinstance(pdu, rpc.Request)
    decoded = decode_request(ndr.unwrap_request(pdu.stub, ndr.TransferSyntax.NDR32))
    assert decoded.salt == bytes.fromhex("956bdc560a6c5698b8ed0b4603fb480e")


def test_v4_request_with_a_wrong_mac_decodes_but_is_flagged() -> None:
    message = bytearray(encode_request(make_request(4)))
    message[-1] ^= 0x80
    decoded = decode_request(bytes(message))
    assert not decoded.mac_valid and decoded.request == make_request(4)


@pytest.mark.parametrize("major", VERSIONS)
def test_longer_request_messages_are_accepted(major: int) -> None:
    message = encode_request(make_request(major), IV)
    assert decode_request(message + bytes(8)).request == make_request(major)


def _bad_requests() -> dict[str, bytes]:
    base6 = make_request(6).to_bytes()
    v4 = encode_request(make_request(4))
    v6 = encode_request(make_request(6), IV)
    return {
        "empty": b"",
        "3_bytes": b"\x00\x00\x06",
        "version_7_0": b"\x00\x00\x07\x00" + v6[4:],
        "version_4_1": b"\x01\x00\x04\x00" + v4[4:],
        "version_6_1": b"\x01\x00\x06\x00" + v6[4:],
        "version_3_0": b"\x00\x00\x03\x00" + v6[4:],
        "v4_251_bytes": v4[:251],
        "v5_259_bytes": encode_request(make_request(5), IV)[:259],
        "v6_259_bytes": v6[:259],
        "v6_truncated_100": v6[:100],
        "wrong_padding_zeros": _encrypt_request(b"\x00\x00\x06\x00", base6 + bytes(4)),
        "wrong_padding_03": _encrypt_request(b"\x00\x00\x06\x00", base6 + b"\x03" * 4),
        "v5_key_for_v6": _encrypt_request(b"\x00\x00\x05\x00", crypto.pkcs7_pad(base6))[:2]
        + b"\x06\x00"
        + _encrypt_request(b"\x00\x00\x05\x00", crypto.pkcs7_pad(base6))[4:],
        "inner_5_outer_6": _encrypt_request(
            b"\x00\x00\x06\x00", crypto.pkcs7_pad(make_request(5).to_bytes())
        ),
        "inner_6_outer_5": _encrypt_request(b"\x00\x00\x05\x00", crypto.pkcs7_pad(base6)),
        "inner_minor_1": _encrypt_request(
            b"\x00\x00\x06\x00", crypto.pkcs7_pad(make_request(6, minor_version=1).to_bytes())
        ),
    }


BAD_REQUESTS = _bad_requests()


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_invalid_requests_raise_invalid_data(name: str) -> None:
    with pytest.raises(KmsMessageError) as info:
        decode_request(BAD_REQUESTS[name])
    assert info.value.hresult == 0x8007000D


def test_encode_request_refuses_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(make_request(6), bytes(15))
    with pytest.raises(LocalProtocolError):
        encode_request(make_request(7), IV)


# --- encode_response -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("major", "epid", "length"),
    [
        (4, EPID, 160),
        (4, "05426-00206-557-488431-03-8251-9200.0000-2002025", 158),
        (5, EPID, 228),
        (5, "05426-00206-557-488431-03-8251-9200.0000-2002025", 212),
        (6, EPID, 260),
        (6, "05426-00206-557-488431-03-8251-9200.0000-2002025", 260),
    ],
)
def test_response_message_sizes(major: int, epid: str, length: int) -> None:
    _, reply = exchange(major, epid=epid)
    assert len(reply) == length


@pytest.mark.parametrize("major", VERSIONS)
def test_responses_verify_with_every_check_passing(major: int) -> None:
    message, reply = exchange(major)
    verified = verify_response(message, reply)
    assert verified.ok and not failed(verified)
    assert verified.response == make_response(make_request(major))
    assert verified.hwid == (HWID if major == 6 else None)
    verified.raise_for_failure()
    names = {check.name for check in verified.checks}
    assert {"version", "time_stamp", "client_machine_id", "size"} <= names
    assert ("mac" in names) == (major == 4) and ("hmac" in names) == (major == 6)


@pytest.mark.parametrize("major", [5, 6])
def test_encrypted_responses_depend_only_on_the_injected_randomness(major: int) -> None:
    assert exchange(major, random_bytes=seeded(7)) == exchange(major, random_bytes=seeded(7))
    assert exchange(major, random_bytes=seeded(7))[1] != exchange(major, random_bytes=seeded(8))[1]


def test_v4_response_is_the_base_response_and_its_mac() -> None:
    _, reply = exchange(4)
    base = make_response(make_request(4)).to_bytes()
    assert reply == base + crypto.kms_v4_mac(base)


def test_v5_response_starts_with_the_request_iv() -> None:
    message, reply = exchange(5)
    assert reply[:4] == message[:4] and reply[4:20] == message[4:20]
    plain = decrypt_response(reply)
    assert plain[:16] == _salt(message) and len(plain) == 108 + 100


def test_v6_plaintext_layout_of_spec_section_12_4() -> None:
    message, reply = exchange(6, random_bytes=seeded(3))
    salt, plain = _salt(message), decrypt_response(reply)
    at = 16 + 144
    random_xor_salt, digest = plain[at : at + 16], plain[at + 16 : at + 48]
    assert len(plain) == 148 + 100 and reply[4:20] != message[4:20]
    assert plain[16:at] == make_response(make_request(6)).to_bytes()
    assert crypto.sha256(bytes(a ^ b for a, b in zip(random_xor_salt, salt, strict=True))) == digest
    assert plain[at + 48 : at + 56] == HWID and plain[at + 56 : at + 72] == salt
    assert plain[at + 72 :] == crypto.v6_hmac(NOW, plain[: at + 72])


def test_v6_response_iv_differs_from_salt_even_if_random_bytes_returns_it() -> None:
    message = encode_request(make_request(6), IV)
    salt = _salt(message)
    decoded = decode_request(message)
    reply = encode_response(
        decoded, make_response(decoded.request), random_bytes=lambda n: (salt * 2)[:n], hwid=HWID
    )
    assert decrypt_response(reply)[:16] != salt
    verified = verify_response(message, reply)
    assert verified.ok and not failed(verified)


def test_encode_response_refuses_bad_arguments() -> None:
    decoded = decode_request(encode_request(make_request(6), IV))
    response = make_response(decoded.request)
    with pytest.raises(LocalProtocolError):
        encode_response(decoded, response, random_bytes=seeded(), hwid=bytes(7))
    without_salt = DecodedRequest(decoded.request, 6, decoded.message)
    with pytest.raises(LocalProtocolError):
        encode_response(without_salt, response, random_bytes=seeded())


# --- verify_response: detections -------------------------------------------------------------


@pytest.mark.parametrize("major", VERSIONS)
@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ({"client_machine_id": uuid.UUID(int=1)}, "client_machine_id"),
        ({"response_time": NOW + 1}, "time_stamp"),
        ({"minor_version": 1}, "version"),
        ({"current_client_count": 4}, "client_count"),
    ],
    ids=["cmid", "time", "minor", "count"],
)
def test_wrong_base_fields_fail_their_check(major: int, fields: dict[str, Any], check: str) -> None:
    message, reply = exchange(major, **fields)
    verified = verify_response(message, reply)
    assert failed(verified) == {check} and not verified.ok
    with pytest.raises(VerificationError) as info:
        verified.raise_for_failure()
    assert info.value.check == check


@pytest.mark.parametrize(("major", "inner"), [(5, 6), (6, 5), (6, 4)])
def test_inner_response_version_must_match_the_outer_one(major: int, inner: int) -> None:
    message, reply = exchange(major, major_version=inner)
    assert failed(verify_response(message, reply)) == {"version"}


@pytest.mark.parametrize("major", [5, 6])
def test_tampered_ciphertext_fails_the_hash(major: int) -> None:
    message, reply = exchange(major)
    hash_block = 4 + 16 + 144 + 16  # wire offset of the ciphertext block holding the Hash
    tampered = bytearray(reply)
    tampered[hash_block] ^= 0x01
    verified = verify_response(message, bytes(tampered))
    assert failed(verified) == ({"hash"} if major == 5 else {"hash", "hmac"})


@pytest.mark.parametrize("major", [5, 6])
def test_tampered_padding_fails_decryption(major: int) -> None:
    message, reply = exchange(major)
    tampered = bytearray(reply)
    tampered[-17] ^= 0x01  # flips the same bit of the last pad byte
    with pytest.raises(VerificationError) as info:
        verify_response(message, bytes(tampered))
    assert info.value.check == "decryption"


@pytest.mark.parametrize("major", [5, 6])
@pytest.mark.parametrize("cut", [1, 15, 16])
def test_ciphertext_of_partial_blocks_fails_decryption(major: int, cut: int) -> None:
    message, reply = exchange(major)
    truncated = reply[:-cut] if cut != 16 else reply[:4]
    with pytest.raises(VerificationError) as info:
        verify_response(message, truncated)
    assert info.value.check == "decryption"


def test_v6_modified_plaintext_without_new_hmac_fails_the_hmac() -> None:
    message, reply = exchange(6)

    def change_hwid(plain: bytearray) -> None:
        plain[16 + 144 + 48] ^= 0xFF

    verified = verify_response(message, reencrypt(reply, change_hwid))
    assert failed(verified) == {"hmac"} and verified.hwid != HWID


@pytest.mark.parametrize(("offset", "accepted"), [(-2, False), (-1, True), (1, True), (2, False)])
def test_v6_hmac_tolerates_one_slot_either_side(offset: int, accepted: bool) -> None:
    message, reply = exchange(6)
    verified = verify_response(message, reencrypt(reply, lambda p: resign_v6(p, offset)))
    assert failed(verified) == (set() if accepted else {"hmac"})


def test_v6_xor_salts_must_equal_the_request_salt() -> None:
    message, reply = exchange(6)

    def change_xor_salts(plain: bytearray) -> None:
        plain[-32] ^= 0x01
        resign_v6(plain)

    assert failed(verify_response(message, reencrypt(reply, change_xor_salts))) == {"ivs"}


def test_v6_response_iv_equal_to_salt_is_only_a_warning() -> None:
    message, reply = exchange(6)

    def reuse_salt(plain: bytearray) -> None:
        plain[:16] = _salt(message)
        resign_v6(plain)

    verified = verify_response(message, reencrypt(reply, reuse_salt))
    assert failed(verified) == {"iv_not_suspicious"} and verified.ok


def test_v5_response_iv_must_equal_the_salt() -> None:
    message, reply = exchange(5)

    def change_iv(plain: bytearray) -> None:
        plain[0] ^= 0x01

    assert failed(verify_response(message, reencrypt(reply, change_iv))) == {"ivs"}


@pytest.mark.parametrize("major", [5, 6])
def test_surplus_plaintext_is_only_a_size_warning(major: int) -> None:
    message, reply = exchange(major)

    def append_block(plain: bytearray) -> None:
        plain += bytes(16)

    verified = verify_response(message, reencrypt(reply, append_block))
    assert failed(verified) == {"size"} and verified.ok


def test_v4_surplus_bytes_are_only_a_size_warning() -> None:
    message, reply = exchange(4)
    verified = verify_response(message, reply + bytes(4))
    assert failed(verified) == {"size"} and verified.ok


@pytest.mark.parametrize("where", ["mac", "count"])
def test_v4_wrong_mac_is_detected(where: str) -> None:
    message, reply = exchange(4)
    tampered = bytearray(reply)
    tampered[-1 if where == "mac" else 8 + 100 + 24] ^= 0x01
    assert failed(verify_response(message, bytes(tampered))) == {"mac"}


def _drop_epid_nul(plain: bytearray, start: int) -> None:
    """Replace the ePID's NUL terminator by a digit (the PIDSize stays)."""
    (pid_size,) = struct.unpack_from("<I", plain, start + 4)
    plain[start + 8 + pid_size - 2 : start + 8 + pid_size] = "7".encode("utf-16-le")


@pytest.mark.parametrize("major", VERSIONS)
def test_epid_without_nul_is_rejected(major: int) -> None:
    message, reply = exchange(major)
    if major == 4:
        tampered = bytearray(reply)
        _drop_epid_nul(tampered, 0)
        reply = bytes(tampered)
    else:
        reply = reencrypt(reply, lambda plain: _drop_epid_nul(plain, 16))
    with pytest.raises(VerificationError) as info:
        verify_response(message, reply)
    assert info.value.check == "pid_length"


@pytest.mark.parametrize("version", [b"\x00\x00\x07\x00", b"\x00\x00\x03\x00"])
def test_unsupported_response_versions_are_rejected(version: bytes) -> None:
    message, reply = exchange(6)
    with pytest.raises(VerificationError) as info:
        verify_response(message, version + reply[4:])
    assert info.value.check == "version"


@pytest.mark.parametrize(("sent", "answered"), [(6, 5), (5, 6), (4, 6), (6, 4)])
def test_response_of_another_protocol_version_fails(sent: int, answered: int) -> None:
    message = encode_request(make_request(sent), IV)
    _, reply = exchange(answered)
    verified = verify_response(message, reply)
    assert "version" in failed(verified) and not verified.ok


def test_raise_for_failure_names_the_first_failed_fatal_check() -> None:
    message, reply = exchange(6, client_machine_id=uuid.UUID(int=1), response_time=NOW + 5)
    verified = verify_response(message, reply)
    assert failed(verified) == {"time_stamp", "client_machine_id"}
    with pytest.raises(VerificationError) as info:
        verified.raise_for_failure()
    assert info.value.check == "time_stamp"
    assert dataclasses.replace(verified, checks=()).ok


def test_decoded_ids_are_exact_whatever_the_client_chose() -> None:
    """Client-chosen ids go through the shared-UUID cache: every decoded id is still its own."""
    rng = random.Random(5)
    for index in range(120):
        ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(4)]
        request = dataclasses.replace(
            make_request(),
            application_id=ids[0],
            sku_id=ids[1],
            kms_counted_id=ids[2],
            previous_client_machine_id=ids[3] if index % 2 else uuid.UUID(int=0),
        )
        assert KmsRequest.from_bytes(request.to_bytes()) == request
