"""NDR32/NDR64 stubs of RequestActivation (spec §6, §7)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.errors import KmsMessageError, ProtocolError
from kmsgate.protocol.ndr import TransferSyntax
from tests import vectors

NDR32, NDR64 = TransferSyntax.NDR32, TransferSyntax.NDR64
WORD = {NDR32: 4, NDR64: 8}
HYP = settings(max_examples=150, deadline=None)
syntaxes = st.sampled_from(TransferSyntax)
u32 = st.integers(0, 0xFFFFFFFF)


def _words(syntax: TransferSyntax, *values: int) -> bytes:
    return b"".join(v.to_bytes(WORD[syntax], "little") for v in values)


def _request_pdu(message: bytes, syntax: TransferSyntax) -> bytes:
    context = 0 if syntax is NDR32 else 1
    return rpc.encode_pdu(rpc.Request(2, context, 0, ndr.wrap_request(message, syntax)))


# --- request stub --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "syntax", "pdu_length", "alloc_hint"),
    [
        (252, NDR32, 284, 260),
        (252, NDR64, 292, 268),
        (260, NDR32, 292, 268),
        (260, NDR64, 300, 276),
    ],
)
def test_request_pdu_sizes_of_spec_section_6(
    size: int, syntax: TransferSyntax, pdu_length: int, alloc_hint: int
) -> None:
    message = bytes(range(256))[:size] + bytes(max(0, size - 256))
    raw = _request_pdu(message, syntax)
    assert len(raw) == pdu_length
    assert struct.unpack_from("<I", raw, 16)[0] == alloc_hint == len(raw) - 24
    assert raw[24:] == _words(syntax, size, size) + message


@HYP
@given(st.binary(max_size=600), syntaxes)
def test_request_stub_round_trips(message: bytes, syntax: TransferSyntax) -> None:
    stub = ndr.wrap_request(message, syntax)
    assert len(stub) == 2 * WORD[syntax] + len(message)  # no trailing padding
    assert ndr.unwrap_request(stub, syntax) == message


def test_request_stub_from_a_capture_unwraps_in_both_syntaxes() -> None:
    pdus = {p["file"]: bytes.fromhex(p["hex"]) for p in vectors.raw_json("client_pdus")["pdus"]}
    for name, syntax in (("v6_req.bin", NDR32), ("v6_req_ndr64.bin", NDR64)):
        request = rpc.decode_pdu(pdus[name])
        assert isinstance(request, rpc.Request)
        message = ndr.unwrap_request(request.stub, syntax)
        assert len(message) == 260 and message[:4] == b"\x00\x00\x06\x00"


def _bad_request_stubs() -> list[tuple[str, TransferSyntax, bytes]]:
    cases = []
    for syntax in TransferSyntax:
        head = 2 * WORD[syntax]
        cases += [
            (f"{syntax.value}-empty", syntax, b""),
            (f"{syntax.value}-truncated_head", syntax, _words(syntax, 4)),
            (f"{syntax.value}-one_byte_short", syntax, _words(syntax, 4, 4)[: head - 1]),
            (f"{syntax.value}-size_ne_conformance", syntax, _words(syntax, 4, 5) + bytes(5)),
            (f"{syntax.value}-conformance_ne_size", syntax, _words(syntax, 5, 4) + bytes(5)),
            (f"{syntax.value}-declares_more", syntax, _words(syntax, 9, 9) + bytes(8)),
            (f"{syntax.value}-oversize", syntax, _words(syntax, 5000, 5000) + bytes(5000)),
            (f"{syntax.value}-huge", syntax, _words(syntax, 2**31, 2**31) + bytes(16)),
        ]
    return cases


@pytest.mark.parametrize(
    ("syntax", "stub"),
    [case[1:] for case in _bad_request_stubs()],
    ids=[case[0] for case in _bad_request_stubs()],
)
def test_malformed_request_stubs_raise_invalid_data(syntax: TransferSyntax, stub: bytes) -> None:
    with pytest.raises(KmsMessageError) as info:
        ndr.unwrap_request(stub, syntax)
    assert info.value.hresult == 0x8007000D


def test_ndr32_stub_read_as_ndr64_is_rejected() -> None:
    stub = ndr.wrap_request(bytes(260), NDR32)
    with pytest.raises(KmsMessageError):
        ndr.unwrap_request(stub, NDR64)


def test_largest_accepted_request_message() -> None:
    message = bytes(ndr.MAX_KMS_MESSAGE)
    assert ndr.unwrap_request(ndr.wrap_request(message, NDR64), NDR64) == message
    with pytest.raises(KmsMessageError):
        ndr.unwrap_request(ndr.wrap_request(message + b"\x00", NDR64), NDR64)


# --- response stub -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "syntax", "stub_length", "frag_length"),
    [
        (158, NDR32, 176, 200),
        (158, NDR64, 188, 212),
        (160, NDR32, 176, 200),
        (160, NDR64, 188, 212),
        (212, NDR32, 228, 252),
        (212, NDR64, 240, 264),
        (260, NDR32, 276, 300),
        (260, NDR64, 288, 312),
    ],
)
def test_response_sizes_of_spec_section_7(
    size: int, syntax: TransferSyntax, stub_length: int, frag_length: int
) -> None:
    stub = ndr.wrap_response(b"\xaa" * size, syntax)
    assert len(stub) == stub_length
    raw = rpc.encode_pdu(rpc.Response(2, 0, stub))
    assert len(raw) == frag_length
    assert struct.unpack_from("<I", raw, 16)[0] == stub_length  # alloc_hint


@pytest.mark.parametrize("syntax", TransferSyntax)
@pytest.mark.parametrize("size", range(9))
def test_response_layout_and_padding(syntax: TransferSyntax, size: int) -> None:
    word = WORD[syntax]
    message = bytes(range(1, size + 1))
    stub = ndr.wrap_response(message, syntax, hresult=0x11223344)
    pad = -(size + (16 if syntax is NDR32 else 28)) % 4
    assert len(stub) == 3 * word + size + 4 + pad
    assert stub[: 3 * word] == _words(syntax, size, 0x00020000, size)
    assert stub[3 * word : 3 * word + size] == message
    # The return value follows the message immediately, the padding comes after it.
    assert stub[3 * word + size : 3 * word + size + 4] == bytes.fromhex("44332211")
    assert stub[3 * word + size + 4 :] == bytes(pad)
    assert len(stub) % 4 == 0


@HYP
@given(st.binary(max_size=600), syntaxes, u32)
def test_response_stub_round_trips(message: bytes, syntax: TransferSyntax, hresult: int) -> None:
    result = ndr.unwrap_response(ndr.wrap_response(message, syntax, hresult), syntax)
    assert result == ndr.ResponseStub(message, hresult, ())


@pytest.mark.parametrize(
    ("syntax", "expected"),
    [
        (NDR32, "00000000" "00000000" "0d000780"),
        (NDR64, "0000000000000000" "0000000000000000" "0d000780"),
    ],
)  # fmt: skip
def test_error_stub_bytes_of_spec_section_7_2(syntax: TransferSyntax, expected: str) -> None:
    stub = ndr.wrap_error(0x8007000D, syntax)
    assert stub.hex() == expected
    assert ndr.unwrap_response(stub, syntax) == ndr.ResponseStub(None, 0x8007000D)


def test_error_response_pdus_match_vlmcsd() -> None:
    ndr32 = "050002031000000024000000020000000c0000000000000000000000000000000d000780"
    ndr64 = (
        "05000203100000002c00000003000000"  # response, frag_length 44, call_id 3
        "14000000" "0100" "00" "00"  # alloc_hint 20, context 1, cancel_count, reserved
        "0000000000000000" "0000000000000000" "0d000780"  # size, null referent, HRESULT
    )  # fmt: skip
    ours32 = rpc.encode_pdu(rpc.Response(2, 0, ndr.wrap_error(0x8007000D, NDR32)))
    ours64 = rpc.encode_pdu(rpc.Response(3, 1, ndr.wrap_error(0x8007000D, NDR64)))
    assert (ours32.hex(), len(ours32)) == (ndr32, 36)
    assert (ours64.hex(), len(ours64)) == (ndr64, 44)
    conv = vectors.load("vlmcsd_err_version_7_0_ndr32_ndr64")
    answers = {raw for d, raw in conv.pdus if d == "s2c" and raw and raw[2] == rpc.PType.RESPONSE}
    assert answers == {ours32, ours64}


@pytest.mark.parametrize("syntax", TransferSyntax)
def test_response_warnings(syntax: TransferSyntax) -> None:
    good = ndr.wrap_response(b"abc", syntax)  # one pad byte
    word = WORD[syntax]
    odd_referent = _words(syntax, 3, 0x00030000, 3) + good[3 * word :]
    cases = {
        "unusual referent id 0x00030000": odd_referent,
        "non-zero padding after the return value": good[:-1] + b"\x01",
        "0 trailing bytes after the return value": good[:-1],
        "5 trailing bytes after the return value": good + bytes(4),
    }
    for warning, stub in cases.items():
        result = ndr.unwrap_response(stub, syntax)
        assert (result.message, result.hresult, result.warnings) == (b"abc", 0, (warning,))


@pytest.mark.parametrize("syntax", TransferSyntax)
@pytest.mark.parametrize(
    "case", ["empty", "short_error_stub", "no_conformance", "size_ne_conformance", "truncated"]
)
def test_malformed_response_stubs_raise_protocol_error(syntax: TransferSyntax, case: str) -> None:
    stubs = {
        "empty": b"",
        "short_error_stub": ndr.wrap_error(0x8007000D, syntax)[:-1],
        "no_conformance": _words(syntax, 4, 0x20000) + b"\x00\x00\x00",
        "size_ne_conformance": _words(syntax, 4, 0x20000, 5) + bytes(12),
        "truncated": ndr.wrap_response(bytes(40), syntax)[:-8],
    }
    with pytest.raises(ProtocolError):
        ndr.unwrap_response(stubs[case], syntax)
