"""Codec edges mutation testing found unasserted: size limits, padding, embedded NULs, counts."""

from __future__ import annotations

import dataclasses

import pytest

from kmsgate.protocol import crypto, messages, ndr, rpc
from kmsgate.protocol.errors import LocalProtocolError, ProtocolError, VerificationError
from kmsgate.protocol.messages import (
    MAX_EPID_BYTES,
    KmsResponse,
    decode_request,
    encode_request,
    encode_response,
)
from kmsgate.protocol.verification import sent_request, verify_response
from tests.protocol.test_messages import EPID, HWID, IV, make_request, make_response, seeded

# --- rpc ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "ok"), [(0xFFFF, True), (0x10000, False)])
def test_a_pdu_fills_the_16_bit_frag_length_and_no_more(length: int, ok: bool) -> None:
    pdu = rpc.Request(2, 0, 0, bytes(length - 24))
    if ok:
        raw = rpc.encode_pdu(pdu)
        assert len(raw) == rpc.parse_header(raw).frag_length == 0xFFFF
        assert rpc.decode_pdu(raw) == dataclasses.replace(pdu, alloc_hint=length - 24)
    else:
        with pytest.raises(LocalProtocolError, match="65536 bytes exceeds frag_length range"):
            rpc.encode_pdu(pdu)


@pytest.mark.parametrize("minor", [0, 1])
def test_bind_keeps_its_minor_version(minor: int) -> None:
    context = rpc.ContextElement(0, rpc.KMS_INTERFACE_SYNTAX, (rpc.NDR32,))
    bind = rpc.Bind(2, (context,), minor_version=minor)
    raw = rpc.encode_pdu(bind)
    assert raw[1] == minor and rpc.decode_pdu(raw) == bind


def test_bind_ack_with_more_than_127_results_round_trips() -> None:
    results = tuple(rpc.ContextResult(2, 2) for _ in range(200))
    ack = rpc.BindAck(2, results, secondary_address="1688")
    assert rpc.decode_pdu(rpc.encode_pdu(ack)) == ack


@pytest.mark.parametrize("versions", [(), ((5, 0),), ((5, 0), (5, 1)), ((4, 0), (5, 0), (5, 1))])
@pytest.mark.parametrize("reason", [0, 4, 0xFFFF])
def test_bind_nak_round_trips_padded_to_four_bytes(
    versions: tuple[tuple[int, int], ...], reason: int
) -> None:
    nak = rpc.BindNak(3, reason, versions)
    raw = rpc.encode_pdu(nak)
    assert len(raw) % 4 == 0 and len(raw) == rpc.parse_header(raw).frag_length
    assert len(raw) - 3 - 2 * len(versions) - rpc.HEADER_SIZE < 4
    assert rpc.decode_pdu(raw) == nak


def _with_body(raw: bytes, body: bytes) -> bytes:
    header = bytearray(raw[: rpc.HEADER_SIZE])
    header[8:10] = (rpc.HEADER_SIZE + len(body)).to_bytes(2, "little")
    return bytes(header) + body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\x00", "bind_nak body too short"),
        (b"\x00\x00\x02\x05\x00\x05", "bind_nak version list truncated"),
    ],
)
def test_truncated_bind_nak_is_named(body: bytes, message: str) -> None:
    raw = _with_body(rpc.encode_pdu(rpc.BindNak(3, 0)), body)
    with pytest.raises(rpc.RpcDecodeError) as info:
        rpc.decode_pdu(raw)
    assert str(info.value) == message


def test_bind_nak_body_of_exactly_three_bytes_has_no_versions() -> None:
    raw = _with_body(rpc.encode_pdu(rpc.BindNak(3, 0)), b"\x04\x00\x00")
    assert rpc.decode_pdu(raw) == rpc.BindNak(3, 4, ())
    raw = _with_body(rpc.encode_pdu(rpc.BindNak(3, 0)), b"\x04\x00\x01\x05\x00")
    assert rpc.decode_pdu(raw) == rpc.BindNak(3, 4, ((5, 0),))


# --- ndr ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", list(ndr.TransferSyntax))
def test_truncated_response_stubs_say_where(syntax: ndr.TransferSyntax) -> None:
    stub = ndr.wrap_response(b"x" * 40, syntax)
    word = syntax.word.size
    with pytest.raises(ProtocolError, match=f"{syntax.value} response stub of 3 bytes"):
        ndr.unwrap_response(stub[:3], syntax)
    with pytest.raises(ProtocolError, match="response stub truncated before the array"):
        ndr.unwrap_response(stub[: 3 * word + 3], syntax)
    short = stub[: 3 * word + 20]
    with pytest.raises(ProtocolError, match=f"declares 40 bytes but the stub is {len(short)}"):
        ndr.unwrap_response(short, syntax)
    assert ndr.unwrap_response(stub, syntax).message == b"x" * 40


# --- messages ----------------------------------------------------------------------------------


def _response_bytes(epid_units: bytes) -> bytes:
    base = make_response(make_request(6)).to_bytes()
    tail = base[8 + 2 * (len(EPID) + 1) :]
    return base[:4] + len(epid_units).to_bytes(4, "little") + epid_units + tail


def test_an_epid_of_exactly_the_maximum_size_decodes() -> None:
    epid = "7" * (MAX_EPID_BYTES // 2 - 1)
    response = dataclasses.replace(make_response(make_request(6)), epid=epid)
    raw = response.to_bytes()
    assert int.from_bytes(raw[4:8], "little") == MAX_EPID_BYTES
    assert KmsResponse.from_bytes(raw) == (response, len(raw))
    with pytest.raises(LocalProtocolError, match=f"ePID of 130 bytes exceeds {MAX_EPID_BYTES}"):
        dataclasses.replace(response, epid=epid + "7").to_bytes()


def test_encoded_epids_are_remembered_within_a_bound() -> None:
    # A relay answers with its upstream's ePIDs: however many, the encodings kept are bounded
    # and each answer still carries its own.
    base = make_response(make_request(6))
    for number in range(3 * messages._EPID_FIELDS_LIMIT):
        epid = f"{number:05d}-00206-{number % 999:03d}-000000-03-1033-17763.0000-0012024"
        raw = dataclasses.replace(base, epid=epid).to_bytes()
        assert KmsResponse.from_bytes(raw)[0].epid == epid
        assert 0 < len(messages._EPID_FIELDS) <= messages._EPID_FIELDS_LIMIT
    encoded = EPID.encode("utf-16-le") + b"\x00\x00"
    assert base.to_bytes()[4:8] == len(encoded).to_bytes(4, "little")
    assert base.to_bytes()[8 : 8 + len(encoded)] == encoded


@pytest.mark.parametrize(
    "text",
    ["03612\x0000206", "abc\x00", "\x00abc", "a\x00\x00b"],
    ids=["middle", "last", "first", "two"],
)
def test_an_epid_with_an_embedded_nul_is_refused(text: str) -> None:
    raw = _response_bytes(text.encode("utf-16-le") + b"\x00\x00")
    with pytest.raises(VerificationError) as info:
        KmsResponse.from_bytes(raw)
    assert (info.value.check, info.value.detail) == (
        "pid_length",
        "ePID is not exactly NUL-terminated",
    )


@pytest.mark.parametrize("major", [4, 5, 6])
def test_sent_request_knows_what_decoding_would_find(major: int) -> None:
    request = make_request(major)
    message = encode_request(request, IV)
    assert sent_request(request, message) == decode_request(message)


def test_a_count_equal_to_the_n_count_is_enough() -> None:
    request = make_request(6)
    message = encode_request(request, IV)
    decoded = decode_request(message)
    for count, ok in (
        (request.required_client_count, True),
        (request.required_client_count - 1, False),
    ):
        response = make_response(request, current_client_count=count)
        reply = encode_response(decoded, response, random_bytes=seeded(), hwid=HWID)
        checks = {c.name: c for c in verify_response(message, reply).checks}
        assert checks["client_count"].passed is ok
        assert checks["client_count"].detail == ("" if ok else f"count {count} below N {count + 1}")


def test_passed_checks_carry_no_detail() -> None:
    message = encode_request(make_request(6), IV)
    reply = encode_response(
        decode_request(message), make_response(make_request(6)), random_bytes=seeded(), hwid=HWID
    )
    verified = verify_response(message, reply)
    assert verified.ok and verified.checks
    assert all(check.passed and check.detail == "" for check in verified.checks)


# --- rpc decode errors: each names what is missing (they become ConnectionClosed reasons) ------

_BIND = rpc.PType.BIND
_ACK = rpc.PType.BIND_ACK


def _pdu(ptype: int, body: bytes, *, flags: int = rpc.PFC_SINGLE) -> bytes:
    header = bytearray(rpc.encode_pdu(rpc.Fault(1, 0))[: rpc.HEADER_SIZE])
    header[2], header[3] = ptype, flags
    header[8:10] = (rpc.HEADER_SIZE + len(body)).to_bytes(2, "little")
    return bytes(header) + body


_ONE_CONTEXT = (12).to_bytes(2, "little") * 2 + bytes(4) + b"\x01\x00\x00\x00"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_pdu(_BIND, bytes(11)), "bind body too short"),
        (_pdu(_BIND, _ONE_CONTEXT + bytes(3)), "bind truncated inside a context element"),
        (
            _pdu(_BIND, _ONE_CONTEXT + b"\x00\x00\x01\x00"),
            "bind context element truncated or without transfer syntax",
        ),
        (_pdu(_ACK, bytes(9)), "bind_ack body too short"),
        (_pdu(_ACK, bytes(8) + b"\x05\x00" + b"1688"), "bind_ack secondary address truncated"),
        (_pdu(_ACK, bytes(10)), "bind_ack result list missing"),
        (
            _pdu(_ACK, bytes(10) + b"\x00\x00" + b"\x01\x00\x00\x00"),
            "bind_ack result list truncated",
        ),
        (_pdu(rpc.PType.REQUEST, bytes(7)), "request body too short"),
        (
            _pdu(
                rpc.PType.REQUEST, bytes(8) + bytes(15), flags=rpc.PFC_SINGLE | rpc.PFC_OBJECT_UUID
            ),
            "request object UUID truncated",
        ),
        (_pdu(rpc.PType.RESPONSE, bytes(7)), "response body too short"),
        (_pdu(rpc.PType.FAULT, bytes(15)), "fault body too short"),
        (_pdu(rpc.PType.REQUEST, bytes(8))[:-1], "frag_length 24 but 23 bytes given"),
        (_pdu(99, bytes(8)), "unknown PDU type 99"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_pdus_are_named(raw: bytes, message: str) -> None:
    with pytest.raises(rpc.RpcDecodeError) as info:
        rpc.decode_pdu(raw)
    assert str(info.value) == message


def test_authenticated_pdus_are_named() -> None:
    raw = bytearray(_pdu(rpc.PType.REQUEST, bytes(8)))
    raw[10] = 8
    with pytest.raises(rpc.RpcDecodeError) as info:
        rpc.decode_pdu(bytes(raw))
    assert str(info.value) == "authenticated PDUs are not used by KMS"


def test_bind_ack_with_a_non_ascii_address_still_decodes() -> None:
    body = bytes(8) + b"\x03\x00" + b"\xff1\x00" + bytes(3) + b"\x00\x00\x00\x00"
    ack = rpc.decode_pdu(_pdu(_ACK, body))
    assert isinstance(ack, rpc.BindAck) and ack.secondary_address == "\ufffd1"
    assert ack.results == ()


# --- response checks a strict client makes -------------------------------------------------------


def _v4_exchange() -> tuple[bytes, bytes]:
    message = encode_request(make_request(4))
    reply = encode_response(decode_request(message), make_response(make_request(4)),
                            random_bytes=seeded())  # fmt: skip
    return message, reply


def test_a_v4_response_with_trailing_bytes_is_flagged_but_not_fatal() -> None:
    message, reply = _v4_exchange()
    verified = verify_response(message, reply + b"\x00\x00")
    size = {c.name: c for c in verified.checks}["size"]
    assert (size.passed, size.fatal) == (False, False)
    assert size.detail == f"message is {len(reply) + 2} bytes, expected {len(reply)}"
    assert verified.ok


def test_a_v4_response_cut_inside_its_mac_is_a_size_error() -> None:
    message, reply = _v4_exchange()
    with pytest.raises(VerificationError) as info:
        verify_response(message, reply[:-1])
    assert (info.value.check, info.value.detail) == (
        "size",
        f"plaintext ends before byte {len(reply)}",
    )


def test_a_random_iv_equal_to_the_salt_is_changed_in_its_first_bit() -> None:
    message = encode_request(make_request(6), IV)
    decoded = decode_request(message)
    assert decoded.salt is not None
    salt = decoded.salt
    reply = encode_response(decoded, make_response(make_request(6)),
                            random_bytes=lambda n: (salt * 2)[:n], hwid=HWID)  # fmt: skip
    cipher = crypto.cipher_for_version(6)
    plain = crypto.pkcs7_unpad(cipher.cbc_decrypt(bytes(16), reply[4:]))
    assert plain[:16] == bytes([salt[0] ^ 1]) + salt[1:]
    checks = {c.name: c for c in verify_response(message, reply).checks}
    assert checks["iv_not_suspicious"].passed and checks["ivs"].passed


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\x05\x00", "PDU header needs 16 bytes, got 2"),
        (
            b"\x05\x00\x0b\x03" + bytes(4) + b"\x10\x00" + bytes(6),
            "unsupported data representation 00000000",
        ),
        (
            b"\x05\x00\x0b\x03\x10\x00\x00\x00\x0a\x00" + bytes(6),
            "frag_length 10 shorter than the header",
        ),
    ],
)
def test_bad_headers_are_named(header: bytes, message: str) -> None:
    with pytest.raises(rpc.RpcDecodeError) as info:
        rpc.parse_header(header)
    assert str(info.value) == message
