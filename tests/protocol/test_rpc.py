"""DCE-RPC PDU codecs and bind negotiation (spec §2-§8)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kmsgate.protocol import rpc
from kmsgate.protocol.errors import LocalProtocolError, RpcDecodeError
from tests import vectors

HYP = settings(max_examples=150, deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
any_uuid = st.binary(min_size=16, max_size=16).map(lambda raw: uuid.UUID(bytes=raw))
syntaxes = st.builds(rpc.SyntaxId, any_uuid, u32)
context_elements = st.builds(
    rpc.ContextElement, u16, syntaxes, st.lists(syntaxes, min_size=1, max_size=3).map(tuple)
)
context_results = st.builds(rpc.ContextResult, u16, u16, syntaxes)
stubs = st.binary(max_size=300)

binds = st.builds(
    rpc.Bind,
    call_id=u32,
    contexts=st.lists(context_elements, max_size=4).map(tuple),
    max_xmit_frag=u16,
    max_recv_frag=u16,
    assoc_group_id=u32,
    flags=u8,
    alter=st.booleans(),
)
bind_acks = st.builds(
    rpc.BindAck,
    call_id=u32,
    results=st.lists(context_results, max_size=4).map(tuple),
    max_xmit_frag=u16,
    max_recv_frag=u16,
    assoc_group_id=u32,
    secondary_address=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12),
    flags=u8,
    alter=st.booleans(),
)
bind_naks = st.builds(
    rpc.BindNak,
    call_id=u32,
    reason=u16,
    versions=st.lists(st.tuples(u8, u8), max_size=4).map(tuple),
    flags=u8,
)
requests = st.builds(
    rpc.Request,
    call_id=u32,
    context_id=u16,
    opnum=u16,
    stub=stubs,
    alloc_hint=u32,
    flags=u8.map(lambda f: f & ~rpc.PFC_OBJECT_UUID),
    object_uuid=st.none() | any_uuid,
).map(
    # The OBJECT_UUID flag is what announces the UUID on the wire, so it follows the field.
    lambda r: dataclasses.replace(r, flags=r.flags | (rpc.PFC_OBJECT_UUID if r.object_uuid else 0))
)
responses = st.builds(
    rpc.Response,
    call_id=u32,
    context_id=u16,
    stub=stubs,
    alloc_hint=u32,
    cancel_count=u8,
    flags=u8,
)
faults = st.builds(
    rpc.Fault,
    call_id=u32,
    status=u32,
    context_id=u16,
    alloc_hint=u32,
    cancel_count=u8,
    flags=u8,
)
pdus = st.one_of(binds, bind_acks, bind_naks, requests, responses, faults)

ACCEPT32 = rpc.ContextResult(0, 0, rpc.NDR32)
ACCEPT64 = rpc.ContextResult(0, 0, rpc.NDR64)
REJECT_SYNTAX = rpc.ContextResult(2, 2)
REJECT_INTERFACE = rpc.ContextResult(2, 1)
BTFN3 = rpc.btfn_syntax(3)
OTHER_INTERFACE = rpc.SyntaxId(uuid.UUID("8a21c851-4e84-4750-b0d8-ec255555bc06"), 1)
OTHER_SYNTAX = rpc.SyntaxId(uuid.UUID("12345678-1234-5678-1234-567812345678"), 1)


def _ctx(
    context_id: int, syntax: rpc.SyntaxId, interface: rpc.SyntaxId | None = None
) -> rpc.ContextElement:
    return rpc.ContextElement(context_id, interface or rpc.KMS_INTERFACE_SYNTAX, (syntax,))


def _ack(bits: int) -> rpc.ContextResult:
    return rpc.ContextResult(rpc.ContextResultCode.NEGOTIATE_ACK, bits)


def _with_header(raw: bytes, **fields: int) -> bytes:
    """Patch header fields of an encoded PDU (offsets of spec §2)."""
    layout = {"version": (0, 1), "minor": (1, 1), "ptype": (2, 1), "flags": (3, 1)}
    layout |= {"drep0": (4, 1), "frag_length": (8, 2), "auth_length": (10, 2), "call_id": (12, 4)}
    out = bytearray(raw)
    for name, value in fields.items():
        offset, size = layout[name]
        out[offset : offset + size] = value.to_bytes(size, "little")
    return bytes(out)


def _truncated(raw: bytes, body_length: int) -> bytes:
    cut = raw[: rpc.HEADER_SIZE + body_length]
    return _with_header(cut, frag_length=len(cut))


# --- round trips --------------------------------------------------------------------------


@HYP
@given(pdus)
def test_every_pdu_type_round_trips(pdu: rpc.Pdu) -> None:
    raw = rpc.encode_pdu(pdu)
    assert rpc.parse_header(raw).frag_length == len(raw)
    assert rpc.decode_pdu(raw) == pdu
    assert rpc.encode_pdu(rpc.decode_pdu(raw)) == raw


@HYP
@given(st.one_of(requests, responses))
def test_default_alloc_hint_is_the_stub_length(pdu: rpc.Request | rpc.Response) -> None:
    decoded = rpc.decode_pdu(rpc.encode_pdu(dataclasses.replace(pdu, alloc_hint=None)))
    assert isinstance(decoded, rpc.Request | rpc.Response)
    assert decoded.alloc_hint == len(pdu.stub)


@pytest.mark.parametrize("bits", [0, 1, 2, 3, 0x8000, 0xFFFF])
def test_btfn_syntax_carries_its_feature_bits(bits: int) -> None:
    syntax = rpc.btfn_syntax(bits)
    raw = syntax.uuid.bytes_le
    assert raw[:8] == bytes.fromhex("2c1cb76c12984045")
    assert raw[8:] == bits.to_bytes(2, "little") + bytes(6)
    assert syntax.is_btfn and syntax.btfn_bits == bits and syntax.version == 1
    assert not rpc.NDR32.is_btfn and not rpc.NDR64.is_btfn


def test_identifiers_have_the_wire_bytes_of_spec_section_3() -> None:
    assert rpc.KMS_INTERFACE.bytes_le.hex() == "7521c8514e845047b0d8ec255555bc06"
    assert rpc.NDR32_SYNTAX.bytes_le.hex() == "045d888aeb1cc9119fe808002b104860"
    assert rpc.NDR64_SYNTAX.bytes_le.hex() == "33057171babe37498319b5dbef9ccc36"
    assert (rpc.KMS_INTERFACE_SYNTAX.version, rpc.NDR32.version, rpc.NDR64.version) == (1, 2, 1)


# --- exact bytes ---------------------------------------------------------------------------


def test_fault_pdu_matches_vlmcsd_apart_from_its_garbage_bytes() -> None:
    captured = bytes.fromhex(
        "05000323100000002000000002000000"  # fault, flags 0x23, frag_length 32, call_id 2
        "20000000" "0000" "7f89"  # alloc_hint 32, context 0, garbage cancel_count/reserved
        "0300011c" "00000000"  # nca_unk_if, reserved
    )  # fmt: skip
    cleaned = captured[:22] + b"\x00\x00" + captured[24:]
    fault = rpc.Fault(call_id=2, status=rpc.NCA_UNK_IF, alloc_hint=32)
    assert rpc.encode_pdu(fault) == cleaned
    decoded = rpc.decode_pdu(captured)
    assert isinstance(decoded, rpc.Fault)
    assert (decoded.status, decoded.call_id, decoded.flags) == (0x1C010003, 2, 0x23)


def test_bind_ack_for_port_1688_has_one_pad_byte_and_results_at_32() -> None:
    ack = rpc.BindAck(
        call_id=2,
        results=(ACCEPT32, _ack(3)),
        assoc_group_id=0xF27E5A9B,
        secondary_address="1688",
        flags=0x13,
    )
    expected = bytes.fromhex(
        "05000c13100000005400000002000000"  # header, frag_length 84
        "d016d0169b5a7ef2"  # max_xmit, max_recv, assoc group
        "0500" "3136383800" "00"  # sec addr length 5, "1688\0", 1 pad byte
        "02000000"  # n_results at offset 32
        "0000" "0000" "045d888aeb1cc9119fe808002b104860" "02000000"
        "0300" "0300" + "00" * 20
    )  # fmt: skip
    assert rpc.encode_pdu(ack) == expected


@pytest.mark.parametrize(
    ("address", "alter", "n_results", "pad", "results_at", "frag_length"),
    [
        ("1688", False, 2, 1, 32, 84),
        ("1688", False, 3, 1, 32, 108),
        ("11688", False, 3, 0, 32, 108),
        ("41688", False, 1, 0, 32, 60),
        ("688", False, 1, 2, 32, 60),
        ("88", False, 1, 3, 32, 60),
        ("", True, 1, 2, 28, 56),
    ],
)
def test_bind_ack_alignment_of_the_result_list(
    address: str, alter: bool, n_results: int, pad: int, results_at: int, frag_length: int
) -> None:
    ack = rpc.BindAck(2, (ACCEPT32,) * n_results, secondary_address=address, alter=alter)
    raw = rpc.encode_pdu(ack)
    addr_end = 26 + (len(address) + 1 if address else 0)
    assert len(raw) == frag_length == rpc.parse_header(raw).frag_length
    assert results_at - addr_end == pad
    assert raw[addr_end:results_at] == bytes(pad)
    assert raw[results_at] == n_results
    assert raw[2] == (rpc.PType.ALTER_CONTEXT_RESP if alter else rpc.PType.BIND_ACK)


def test_bind_ack_decoder_ignores_garbage_pad_bytes() -> None:
    captured = bytes.fromhex(
        "05000f03100000003800000002000000d016d016099fc4580000" "3136"
        "0100000000000000045d888aeb1cc9119fe808002b10486002000000"
    )  # fmt: skip
    ack = rpc.decode_pdu(captured)
    assert isinstance(ack, rpc.BindAck)
    assert ack.alter and ack.secondary_address == "" and ack.results == (ACCEPT32,)


def _zero_garbage(raw: bytes) -> bytes:
    """Blank what the codec drops: bind_ack pad bytes and the fault's reserved byte."""
    out = bytearray(raw)
    if raw[2] in (rpc.PType.BIND_ACK, rpc.PType.ALTER_CONTEXT_RESP):
        addr_end = 26 + int.from_bytes(raw[24:26], "little")
        results_at = (addr_end + 3) // 4 * 4
        out[addr_end:results_at] = bytes(results_at - addr_end)
    elif raw[2] == rpc.PType.FAULT:
        out[23] = 0  # vlmcsd's garbage cancel_count (byte 22) is decoded and kept
    return bytes(out)


def _captured_pdus() -> list[bytes]:
    seen: dict[bytes, None] = {}
    for name in vectors.conversation_names():
        for _, raw in vectors.load(name).pdus:
            if raw and raw[2] != 1:  # the crafted PTYPE 1 of close_on_unknown_ptype
                seen.setdefault(raw)
    for entry in vectors.raw_json("client_pdus")["pdus"]:
        seen.setdefault(bytes.fromhex(entry["hex"]))
    for entry in vectors.raw_json("error_paths"):
        seen.setdefault(bytes.fromhex(entry["sent_hex"]))
        seen.setdefault(bytes.fromhex(entry["reply_hex"]))
    return list(seen)


CAPTURED = _captured_pdus()


def test_every_captured_pdu_reencodes_to_the_same_bytes() -> None:
    assert len(CAPTURED) > 100
    kinds = set()
    for raw in CAPTURED:
        pdu = rpc.decode_pdu(raw)
        kinds.add(type(pdu))
        assert rpc.encode_pdu(pdu) == _zero_garbage(raw), raw.hex()
    assert kinds == {rpc.Bind, rpc.BindAck, rpc.Request, rpc.Response, rpc.Fault}


def test_captured_binds_decode_to_the_vlmcs_contexts() -> None:
    bind = rpc.decode_pdu(bytes.fromhex(vectors.raw_json("client_pdus")["pdus"][2]["hex"]))
    assert isinstance(bind, rpc.Bind) and not bind.alter
    assert (bind.call_id, bind.flags, bind.max_xmit_frag, bind.assoc_group_id) == (2, 0x13, 5840, 0)
    assert bind.contexts == (
        _ctx(0, rpc.NDR32),
        _ctx(1, rpc.NDR64),
        _ctx(2, BTFN3),
    )


# --- header validation ---------------------------------------------------------------------

GOOD_FAULT = rpc.encode_pdu(rpc.Fault(call_id=2, status=rpc.NCA_UNK_IF))


@pytest.mark.parametrize(
    "patch",
    [
        {"version": 4},
        {"version": 6},
        {"minor": 2},
        {"drep0": 0x00},  # big-endian integers
        {"drep0": 0x11},  # EBCDIC characters
        {"frag_length": 0},
        {"frag_length": 15},
        {"frag_length": 31},  # shorter than the bytes given
        {"frag_length": 33},  # longer than the bytes given
        {"auth_length": 8},
        {"ptype": 1},
        {"ptype": 16},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_invalid_headers_are_rejected(patch: dict[str, int]) -> None:
    with pytest.raises(RpcDecodeError):
        rpc.decode_pdu(_with_header(GOOD_FAULT, **patch))


@pytest.mark.parametrize("length", [0, 1, 15])
def test_headers_shorter_than_16_bytes_are_rejected(length: int) -> None:
    with pytest.raises(RpcDecodeError):
        rpc.parse_header(GOOD_FAULT[:length])
    with pytest.raises(RpcDecodeError):
        rpc.decode_pdu(GOOD_FAULT[:length])


def test_parse_header_reads_every_field() -> None:
    header = rpc.parse_header(_with_header(GOOD_FAULT, call_id=0xDEADBEEF, flags=0x03))
    assert header == rpc.PduHeader(5, 0, 3, 0x03, b"\x10\x00\x00\x00", 32, 0, 0xDEADBEEF)


def test_pdu_longer_than_frag_length_range_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        rpc.encode_pdu(rpc.Request(2, 0, 0, bytes(0x10000)))


SAMPLES = {
    "bind": rpc.encode_pdu(rpc.Bind(2, (_ctx(0, rpc.NDR32), _ctx(1, BTFN3)))),
    "bind_ack": rpc.encode_pdu(rpc.BindAck(2, (ACCEPT32,), secondary_address="1688")),
    "bind_nak": rpc.encode_pdu(rpc.BindNak(2, 0, ((5, 0), (5, 1)))),
    "request": rpc.encode_pdu(rpc.Request(2, 0, 0, b"", object_uuid=uuid.UUID(int=7))),
    "response": rpc.encode_pdu(rpc.Response(2, 0, b"")),
    "fault": GOOD_FAULT,
}


@pytest.mark.parametrize("kind", SAMPLES)
def test_every_truncation_of_a_body_is_a_decode_error(kind: str) -> None:
    raw = SAMPLES[kind]
    body_length = len(raw) - rpc.HEADER_SIZE
    rpc.decode_pdu(raw)
    for cut in range(body_length):
        if kind == "bind_nak" and cut >= 7:
            continue  # only the alignment pad is missing
        with pytest.raises(RpcDecodeError):
            rpc.decode_pdu(_truncated(raw, cut))


def test_bind_context_without_transfer_syntax_is_rejected() -> None:
    raw = bytearray(SAMPLES["bind"])
    raw[30] = 0  # n_transfer_syn of the first element
    with pytest.raises(RpcDecodeError):
        rpc.decode_pdu(bytes(raw))


def test_bind_with_more_transfer_syntaxes_decodes_all_of_them() -> None:
    ctx = rpc.ContextElement(4, rpc.KMS_INTERFACE_SYNTAX, (rpc.NDR64, rpc.NDR32, BTFN3))
    raw = rpc.encode_pdu(rpc.Bind(9, (ctx,)))
    assert len(raw) == 28 + 24 + 3 * 20
    assert rpc.decode_pdu(raw) == rpc.Bind(9, (ctx,))


# --- object UUID ------------------------------------------------------------------------------


def test_request_with_object_uuid_puts_it_before_the_stub() -> None:
    object_uuid = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
    raw = rpc.encode_pdu(rpc.Request(5, 1, 0, b"stub", object_uuid=object_uuid))
    assert raw[3] == rpc.PFC_SINGLE | rpc.PFC_OBJECT_UUID
    assert raw[24:40] == object_uuid.bytes_le and raw[40:] == b"stub"
    assert int.from_bytes(raw[16:20], "little") == 4  # alloc_hint counts the stub only
    decoded = rpc.decode_pdu(raw)
    assert isinstance(decoded, rpc.Request)
    assert (decoded.object_uuid, decoded.stub) == (object_uuid, b"stub")


def test_object_uuid_flag_without_uuid_is_not_sent() -> None:
    pdu = rpc.Request(2, 0, 0, bytes(range(40)), flags=rpc.PFC_SINGLE | rpc.PFC_OBJECT_UUID)
    decoded = rpc.decode_pdu(rpc.encode_pdu(pdu))
    assert isinstance(decoded, rpc.Request)
    assert (decoded.object_uuid, decoded.stub) == (None, pdu.stub)


# --- negotiate (spec §5.1) -------------------------------------------------------------------


def _row(
    name: str,
    offered: list[rpc.SyntaxId],
    results: list[rpc.ContextResult],
    contexts: tuple[int | None, int | None] = (None, None),
    btfn_bits: int | None = None,
    *,
    ndr64: bool = True,
    btfn: bool = True,
) -> object:
    """One row of §5.1: offered syntaxes (ids 0, 1, ...) -> results, (ndr32, ndr64) ids, bits."""
    contexts_offered = tuple(_ctx(i, syntax) for i, syntax in enumerate(offered))
    expected = rpc.Negotiation(tuple(results), *contexts, btfn_bits)
    return pytest.param(contexts_offered, ndr64, btfn, expected, id=name)


ALL3 = [rpc.NDR32, rpc.NDR64, BTFN3]
NEGOTIATION_TABLE = [
    _row("ndr32_only", [rpc.NDR32], [ACCEPT32], (0, None)),
    _row("ndr32_btfn", [rpc.NDR32, BTFN3], [ACCEPT32, _ack(3)], (0, None), 3),
    _row("ndr32_ndr64_btfn", ALL3, [REJECT_SYNTAX, ACCEPT64, _ack(3)], (0, 1), 3),
    _row("ndr64_disabled", ALL3, [ACCEPT32, REJECT_SYNTAX, _ack(3)], (0, None), 3, ndr64=False),
    _row("btfn_disabled", ALL3, [REJECT_SYNTAX, ACCEPT64, REJECT_SYNTAX], (0, 1), btfn=False),
    _row(
        "both_disabled",
        ALL3,
        [ACCEPT32, REJECT_SYNTAX, REJECT_SYNTAX],
        (0, None),
        ndr64=False,
        btfn=False,
    ),
    _row("ndr64_only", [rpc.NDR64], [ACCEPT64], (None, 0)),
    _row("ndr64_only_disabled", [rpc.NDR64], [REJECT_SYNTAX], ndr64=False),
    _row("unknown_transfer_syntax", [OTHER_SYNTAX], [REJECT_SYNTAX]),
    _row(
        "btfn_bits_masked", [rpc.NDR32, rpc.btfn_syntax(0xFFFF)], [ACCEPT32, _ack(3)], (0, None), 3
    ),
    _row("btfn_bit_1_only", [rpc.NDR32, rpc.btfn_syntax(1)], [ACCEPT32, _ack(1)], (0, None), 1),
    _row("btfn_bit_2_only", [rpc.NDR32, rpc.btfn_syntax(2)], [ACCEPT32, _ack(2)], (0, None), 2),
    _row("btfn_unknown_bit", [rpc.NDR32, rpc.btfn_syntax(4)], [ACCEPT32, _ack(0)], (0, None), 0),
]


@pytest.mark.parametrize(("contexts", "ndr64", "btfn", "expected"), NEGOTIATION_TABLE)
def test_negotiate_follows_the_result_algorithm(
    contexts: tuple[rpc.ContextElement, ...], ndr64: bool, btfn: bool, expected: rpc.Negotiation
) -> None:
    assert rpc.negotiate(contexts, ndr64=ndr64, btfn=btfn) == expected


@pytest.mark.parametrize("syntax", [rpc.NDR32, rpc.NDR64])
@pytest.mark.parametrize("ndr64", [True, False])
def test_wrong_interface_is_rejected_with_reason_1_and_not_bound(
    syntax: rpc.SyntaxId, ndr64: bool
) -> None:
    outcome = rpc.negotiate((_ctx(0, syntax, OTHER_INTERFACE),), ndr64=ndr64, btfn=True)
    assert outcome.results == (REJECT_INTERFACE,)
    assert outcome.ndr32_context is None and outcome.ndr64_context is None


def test_wrong_interface_does_not_stop_ndr32_on_the_kms_interface() -> None:
    contexts = (_ctx(0, rpc.NDR64, OTHER_INTERFACE), _ctx(1, rpc.NDR32))
    outcome = rpc.negotiate(contexts, ndr64=True, btfn=True)
    assert outcome.results == (REJECT_INTERFACE, ACCEPT32)
    assert (outcome.ndr32_context, outcome.ndr64_context) == (1, None)


def test_interface_version_is_not_checked() -> None:
    interface = dataclasses.replace(rpc.KMS_INTERFACE_SYNTAX, version=0x00020003)
    outcome = rpc.negotiate((_ctx(0, rpc.NDR32, interface),), ndr64=True, btfn=True)
    assert outcome.results == (ACCEPT32,)


def test_negotiation_remembers_the_context_ids_the_client_chose() -> None:
    contexts = (_ctx(7, rpc.NDR32), _ctx(300, rpc.NDR64), _ctx(9, BTFN3))
    outcome = rpc.negotiate(contexts, ndr64=True, btfn=True)
    assert (outcome.ndr32_context, outcome.ndr64_context, outcome.btfn_bits) == (7, 300, 3)


def test_only_the_first_transfer_syntax_of_an_element_counts() -> None:
    element = rpc.ContextElement(0, rpc.KMS_INTERFACE_SYNTAX, (OTHER_SYNTAX, rpc.NDR32))
    assert rpc.negotiate((element,), ndr64=True, btfn=True).results == (REJECT_SYNTAX,)


def test_negotiate_matches_the_captured_bind_acks() -> None:
    bind_pdus = vectors.raw_json("client_pdus")["pdus"]
    by_file = {p["file"]: rpc.decode_pdu(bytes.fromhex(p["hex"])) for p in bind_pdus}
    cases = {"v6_bind3ctx.bin": (REJECT_SYNTAX, ACCEPT64, _ack(3)), "v6_alter.bin": (ACCEPT32,)}
    for name, expected in cases.items():
        bind = by_file[name]
        assert isinstance(bind, rpc.Bind)
        assert rpc.negotiate(bind.contexts, ndr64=True, btfn=True).results == expected


@given(u32, u16, st.binary(max_size=300))
def test_the_response_shortcut_encodes_what_encode_pdu_does(
    call_id: int, context_id: int, stub: bytes
) -> None:
    expected = rpc.encode_pdu(rpc.Response(call_id, context_id, stub))
    assert rpc.encode_response_pdu(call_id, context_id, stub) == expected


def test_the_response_shortcut_refuses_what_encode_pdu_refuses() -> None:
    stub = bytes(0xFFFF - 16 - 8 + 1)
    with pytest.raises(LocalProtocolError):
        rpc.encode_pdu(rpc.Response(2, 0, stub))
    with pytest.raises(LocalProtocolError):
        rpc.encode_response_pdu(2, 0, stub)
    assert len(rpc.encode_response_pdu(2, 0, stub[1:])) == 0xFFFF


def _outcome(decode: object, data: bytes) -> object:
    try:
        return decode(data)  # type: ignore[operator]
    except RpcDecodeError as exc:
        return ("error", str(exc))


_DREP = b"\x10\x00\x00\x00"


@settings(max_examples=300)
@given(
    st.sampled_from([5, 5, 5, 4]),
    st.sampled_from([0, 0, 1, 2]),
    st.sampled_from([0x03, 0x83, 0x01, 0x02, 0x80, 0xFF]),
    st.sampled_from([_DREP, _DREP, b"\x00\x00\x00\x00", b"\x11\x00\x00\x00"]),
    st.one_of(st.none(), st.none(), u16),
    st.sampled_from([0, 0, 8]),
    u32,
    st.binary(max_size=80),
)
@example(5, 0, 0x03, _DREP, None, 8, 2, bytes(40))  # authenticated
@example(5, 0, 0x03, _DREP, 30, 0, 2, bytes(40))  # frag_length disagrees
@example(5, 0, 0x83, _DREP, None, 0, 2, bytes(20))  # object UUID cut short
@example(5, 1, 0x83, _DREP, None, 0, 2, bytes(8) + bytes(range(16)) + b"stub")
@example(5, 0, 0x03, _DREP, 12, 0, 2, bytes(8))  # frag_length under the header size
def test_the_request_shortcut_decodes_what_decode_pdu_does(
    version: int,
    minor: int,
    flags: int,
    drep: bytes,
    frag_length: int | None,
    auth_length: int,
    call_id: int,
    rest: bytes,
) -> None:
    length = 16 + len(rest) if frag_length is None else frag_length
    header = bytes((version, minor, rpc.PType.REQUEST, flags)) + drep
    data = header + length.to_bytes(2, "little") + auth_length.to_bytes(2, "little")
    data += call_id.to_bytes(4, "little") + rest
    assert _outcome(rpc.decode_request_pdu, data) == _outcome(rpc.decode_pdu, data)
    for cut in (0, 15, 16, 23, 24, 39):  # short ones take the general path, same answer
        short = data[:cut]
        assert _outcome(rpc.decode_request_pdu, short) == _outcome(rpc.decode_pdu, short)


def test_the_request_shortcut_reads_object_uuids_and_leaves_other_types_alone() -> None:
    obj = uuid.UUID("11111111-2222-3333-4444-555555555555")
    with_uuid = rpc.encode_pdu(rpc.Request(7, 1, 0, b"stub", object_uuid=obj))
    assert rpc.decode_request_pdu(with_uuid) == rpc.decode_pdu(with_uuid)
    assert rpc.decode_request_pdu(with_uuid).object_uuid == obj  # type: ignore[union-attr]
    response = rpc.encode_pdu(rpc.Response(7, 1, b"stub" * 4))
    assert rpc.decode_request_pdu(response) == rpc.decode_pdu(response)
