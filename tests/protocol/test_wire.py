"""The C layout of the common exchange (_wire.c) against the Python reference it mirrors.

Each C function must return exactly what the reference builds, or None where the reference
refuses, raises or takes a path the C one does not (fragments, object UUIDs, faults): on the
captured vectors, on mutations of them and on random bytes. A session without the C layout
(KMSGATE_PURE_PYTHON_WIRE=1) must answer every vector byte for byte as one with it does.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kmsgate.protocol import messages, ndr, rpc, wire
from kmsgate.protocol.errors import KmsMessageError, LocalProtocolError, RpcDecodeError
from kmsgate.protocol.events import ActivationServed, ConnectionClosed
from kmsgate.protocol.ndr import TransferSyntax
from tests import vectors
from tests.protocol.test_session import bound_server, pump, request_pdu

NDR32, NDR64 = TransferSyntax.NDR32, TransferSyntax.NDR64
ROOT = Path(__file__).resolve().parents[2]
PURE = os.environ.get("KMSGATE_PURE_PYTHON_WIRE") == "1"
# Built wherever kmsgate installs with a C compiler (CI does): a missing build fails here.
pytestmark = pytest.mark.skipif(PURE, reason="KMSGATE_PURE_PYTHON_WIRE=1 turns the C layout off")
BASE_REQUEST = struct.Struct("<HHIII16s16s16s16sIQ16s128s")
# (ndr32 context, ndr64 context) pairs a session can hold; -1: not bound.
CONTEXTS = [(0, 1), (1, 0), (0, -1), (-1, 1), (-1, -1), (5, 7)]


def client_pdus() -> list[bytes]:
    return [
        raw for name in vectors.conversation_names() for _, raw in vectors.load(name).client_pdus()
    ]


def request_pdus() -> list[bytes]:
    return [raw for raw in client_pdus() if raw[2] == rpc.PType.REQUEST]


def reference_request_message(
    raw: bytes, ndr32_context: int, ndr64_context: int
) -> tuple[int, int, bool, bytes] | None:
    """What ServerSession's Python path hands the engine for a plain request, else None."""
    try:
        pdu = rpc.decode_request_pdu(raw)
    except RpcDecodeError:
        return None
    if not isinstance(pdu, rpc.Request) or pdu.object_uuid is not None or pdu.opnum != 0:
        return None
    if pdu.flags & rpc.PFC_SINGLE != rpc.PFC_SINGLE:
        return None
    if pdu.context_id == ndr32_context:
        syntax = NDR32
    elif pdu.context_id == ndr64_context:
        syntax = NDR64
    else:
        return None
    try:
        message = ndr.unwrap_request(pdu.stub, syntax)
    except KmsMessageError:
        return None
    return pdu.call_id, pdu.context_id, syntax is NDR64, message


def reference_base_request(data: bytes) -> tuple[object, ...] | None:
    """KmsRequest.from_bytes's fields as the struct and the spec read them (CMID big-endian)."""
    if len(data) < BASE_REQUEST.size:
        return None
    fields = list(BASE_REQUEST.unpack_from(data))
    fields[8] = uuid.UUID(bytes_le=fields[8]).bytes
    raw_name = fields[12]
    # The name ends at the first NUL code unit: a zero byte pair at an even offset.
    end = next((i for i in range(0, len(raw_name), 2) if raw_name[i : i + 2] == b"\0\0"), None)
    fields[12] = raw_name[:end].decode("utf-16-le", "replace")
    return tuple(fields)


def test_every_captured_request_takes_the_c_path_with_the_references_message() -> None:
    seen = 0
    for raw in request_pdus():
        for contexts in CONTEXTS:
            expected = reference_request_message(raw, *contexts)
            assert wire.request_message is not None
            assert wire.request_message(raw, *contexts) == expected
            seen += expected is not None
    assert seen >= 30  # the vectors' requests on their own contexts do take it


def test_binds_faults_and_answers_are_left_to_the_reference() -> None:
    assert wire.request_message is not None
    others = [raw for raw in client_pdus() if raw[2] != rpc.PType.REQUEST]
    for name in vectors.conversation_names():
        others += [raw for d, raw in vectors.load(name).pdus if d == "s2c" and raw]
    assert others
    for raw in others:
        assert wire.request_message(raw, 0, 1) is None


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """A captured request PDU with a few bytes changed, cut short or extended."""
    raw = bytearray(draw(st.sampled_from(request_pdus())))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(raw) - 1))
        # Mostly the header, the request body and the NDR words, where the checks are.
        if draw(st.booleans()):
            at = draw(st.integers(0, min(len(raw), 48) - 1))
        raw[at] = draw(st.integers(0, 255))
    cut = draw(st.sampled_from(["none", "truncate", "extend"]))
    if cut == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif cut == "extend":
        raw += draw(st.binary(min_size=1, max_size=16))
    if draw(st.booleans()) and len(raw) >= 10:  # keep frag_length consistent more often
        raw[8:10] = len(raw).to_bytes(2, "little")
    return bytes(raw)


@settings(max_examples=1500, deadline=None)
@given(
    raw=st.one_of(mutated_requests(), st.binary(max_size=300)),
    contexts=st.sampled_from(CONTEXTS),
)
def test_any_pdu_gets_the_references_answer_or_none(raw: bytes, contexts: tuple[int, int]) -> None:
    assert wire.request_message is not None
    assert wire.request_message(raw, *contexts) == reference_request_message(raw, *contexts)


def test_fragments_object_uuids_and_other_opnums_are_left_to_the_reference() -> None:
    assert wire.request_message is not None
    stub = ndr.wrap_request(bytes(260), NDR32)
    for pdu in (
        rpc.Request(2, 0, 0, stub, flags=rpc.PFC_FIRST_FRAG),
        rpc.Request(2, 0, 0, stub, flags=rpc.PFC_LAST_FRAG),
        rpc.Request(2, 0, 0, stub, object_uuid=uuid.uuid4()),
        rpc.Request(2, 0, 1, stub),
    ):
        assert wire.request_message(rpc.encode_pdu(pdu), 0, 1) is None
    assert wire.request_message(rpc.encode_pdu(rpc.Request(2, 0, 0, stub)), 0, 1) is not None


def edited(raw: bytes, at: int, value: int) -> bytes:
    return raw[:at] + bytes([value]) + raw[at + 1 :]


@pytest.mark.parametrize(
    ("edit", "taken"),
    [
        (lambda raw: raw, True),
        (lambda raw: edited(raw, 1, 1), True),  # RPC 5.1
        (lambda raw: edited(raw, 1, 2), False),
        (lambda raw: edited(raw, 0, 4), False),
        (lambda raw: edited(raw, 4, 0x00), False),  # big-endian data representation
        (lambda raw: edited(raw, 4, 0x11), False),  # EBCDIC
        (lambda raw: edited(raw, 3, raw[3] | 0x20), True),  # flags beyond the fragment bits
        (lambda raw: edited(raw, 10, 1), False),  # auth_length
    ],
)
def test_header_fields_the_c_path_checks(edit: object, taken: bool) -> None:
    assert wire.request_message is not None
    raw = edit(request_pdu())  # type: ignore[operator]
    assert (wire.request_message(raw, 0, 1) is not None) is taken
    assert wire.request_message(raw, 0, 1) == reference_request_message(raw, 0, 1)


@pytest.mark.parametrize("size", [4095, 4096, 4097, 4104])
def test_messages_up_to_the_largest_kms_message_take_the_c_path(size: int) -> None:
    assert wire.request_message is not None
    for syntax, contexts in ((NDR32, (0, 1)), (NDR64, (1, 0))):
        raw = request_pdu(bytes(size), syntax=syntax)
        assert (wire.request_message(raw, *contexts) is not None) is (size <= ndr.MAX_KMS_MESSAGE)
        assert wire.request_message(raw, *contexts) == reference_request_message(raw, *contexts)


def test_base_request_of_every_captured_request() -> None:
    from kmsgate.protocol.messages import decode_request

    assert wire.base_request is not None
    checked = 0
    for raw in request_pdus():
        got = reference_request_message(raw, 0, 1) or reference_request_message(raw, 1, 0)
        if got is None:
            continue
        try:
            decoded = decode_request(got[3])
        except KmsMessageError:
            continue
        request = decoded.request
        # The base request as it travels (v5/v6 decrypted): re-encoded from the decoded one.
        base = request.to_bytes()
        fields = wire.base_request(base)
        assert fields is not None and fields == reference_base_request(base)
        assert uuid.UUID(bytes=fields[8]) == request.client_machine_id
        checked += 1
    assert checked >= 20


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(min_size=200, max_size=280))
@example(data=bytes(236))
@example(data=bytes(108) + "abc".encode("utf-16-le") + b"\0\x01\0\0" + bytes(119))
@example(data=bytes(108) + b"\x01" + bytes(128))  # a zero pair at an odd offset only
@example(data=bytes(108) + b"\x00\xd8" * 64)  # a lone surrogate: replaced, as the reference
@example(data=bytes(108) + b"\xfe\xffa\x00" + bytes(124))  # byte order marks are text here
@example(data=bytes(108) + b"\xff\xfea\x00" + bytes(124))
def test_base_request_of_any_bytes_is_the_references(data: bytes) -> None:
    assert wire.base_request is not None
    assert wire.base_request(data) == reference_base_request(data)


@settings(max_examples=500)
@given(value=st.integers(0, 2**128 - 1).map(lambda number: uuid.UUID(int=number)))
@example(value=uuid.UUID(int=0))
@example(value=uuid.UUID(int=2**128 - 1))
@example(value=uuid.UUID(int=2**64 - 1))  # the high half empty
@example(value=uuid.UUID(int=2**64))  # the low half empty
def test_uuid_bytes_are_the_uuids_own(value: uuid.UUID) -> None:
    assert wire.uuid_bytes is not None and wire.uuid_bytes_le is not None
    assert wire.uuid_bytes(value) == value.bytes
    assert wire.uuid_bytes_le(value) == value.bytes_le


class _Unsafe(uuid.UUID):
    """A UUID subclass: read as any UUID."""


def test_uuid_bytes_refuse_what_is_not_a_uuid_value() -> None:
    assert wire.uuid_bytes is not None and wire.uuid_bytes_le is not None
    value = _Unsafe(int=0x0102)
    assert wire.uuid_bytes(value) == value.bytes
    for function in (wire.uuid_bytes, wire.uuid_bytes_le):
        for wrong in (value.bytes, value.int, str(value), None):
            with pytest.raises(TypeError, match=r"uuid\.UUID"):
                function(wrong)  # type: ignore[arg-type]
        # The immutable slot set anyway (object.__setattr__): refused, never bytes of a part.
        for number in (-1, 2**128, -(2**200)):
            bent = uuid.UUID(int=1)
            object.__setattr__(bent, "int", number)
            with pytest.raises(ValueError, match=r"2\*\*128"):
                function(bent)
        bent = uuid.UUID(int=1)
        object.__setattr__(bent, "int", "one")
        with pytest.raises(TypeError, match="an int"):
            function(bent)


def test_uuid_from_bytes_refuses_other_input() -> None:
    function = wire.uuid_from_bytes
    assert function is not None
    for size in (0, 15, 17):
        with pytest.raises(ValueError, match="16-char"):
            function(bytes(size))
    with pytest.raises(TypeError):
        function(bytearray(16))


@settings(max_examples=500)
@given(raw=st.binary(min_size=16, max_size=16))
@example(raw=bytes(16))
@example(raw=b"\xff" * 16)
@example(raw=bytes(8) + b"\xff" * 8)  # no high half: the int from one 64-bit half
@example(raw=b"\x80" + bytes(15))
def test_uuid_from_bytes_is_uuid_of_those_bytes(raw: bytes) -> None:
    assert wire.uuid_from_bytes is not None
    built, expected = wire.uuid_from_bytes(raw), uuid.UUID(bytes=raw)
    assert type(built) is uuid.UUID
    assert built == expected and built.int == expected.int and hash(built) == hash(expected)
    assert built.bytes == raw and str(built) == str(expected)
    assert built.is_safe is expected.is_safe is uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(built)) == expected
    with pytest.raises(TypeError):
        built.int = 0  # type: ignore[misc]  # as immutable as any UUID


def test_uuid_from_bytes_keeps_no_memory() -> None:
    assert wire.uuid_from_bytes is not None
    build, raw = wire.uuid_from_bytes, bytes(range(1, 17))
    for _ in range(1000):
        build(raw)
    # Each instance holds its (heap) class and must hand it back when freed.
    class_references = sys.getrefcount(uuid.UUID)
    for _ in range(20_000):
        build(raw)
    after_builds = sys.getrefcount(uuid.UUID)  # apart: the assert's rewriting holds one more
    assert after_builds == class_references
    tracemalloc.start()
    try:
        for _ in range(20_000):
            build(raw)
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(20_000):
            build(raw)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4096


UNEXPECTED_UUID = """
import sys, types
real = __import__("uuid")
stand_in = types.ModuleType("uuid")
stand_in.UUID = type("UUID", (), {})  # no slots: not the layout _wire.c builds
stand_in.SafeUUID = real.SafeUUID
sys.modules["uuid"] = stand_in
import kmsgate.protocol._wire as extension
sys.modules["uuid"] = real
from kmsgate.protocol import messages, wire
request = messages.KmsRequest.from_bytes(bytes.fromhex(sys.argv[1]))
print(hasattr(extension, "uuid_from_bytes"), wire.uuid_from_bytes, wire.base_request is not None)
print(hasattr(extension, "uuid_bytes"), hasattr(extension, "uuid_bytes_le"))
print(hasattr(extension, "response_base"), wire.response_base)
print(type(request.client_machine_id).__module__, request.client_machine_id)
print(request.to_bytes().hex() == sys.argv[1])
response = messages.KmsResponse(6, "epid", request.client_machine_id, 1, 2, 3, 4)
print(messages.KmsResponse.from_bytes(response.to_bytes())[0] == response)
"""


def test_without_the_expected_uuid_layout_the_python_path_builds_cmids() -> None:
    cmid = uuid.UUID("0123f4e5-d6c7-48b9-a0b1-c2d3e4f50617")
    base = messages.KmsRequest(6, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), cmid, 25, 1, "pc")
    done = subprocess.run(
        [sys.executable, "-c", UNEXPECTED_UUID, base.to_bytes().hex()],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        *("False", "None", "True"),
        *("False", "False"),
        *("False", "None"),
        *("uuid", str(cmid)),
        "True",  # the Python path encodes the GUIDs back
        "True",  # and builds a response around the CMID
    ]
    assert messages.KmsRequest.from_bytes(base.to_bytes()).client_machine_id == cmid


@settings(max_examples=500, deadline=None)
@given(
    call_id=st.integers(0, 2**32 - 1),
    context_id=st.integers(0, 2**16 - 1),
    ndr64=st.booleans(),
    message=st.binary(max_size=600),
)
def test_response_pdu_is_the_references(
    call_id: int, context_id: int, ndr64: bool, message: bytes
) -> None:
    assert wire.response_pdu is not None
    syntax = NDR64 if ndr64 else NDR32
    expected = rpc.encode_response_pdu(call_id, context_id, ndr.wrap_response(message, syntax))
    assert wire.response_pdu(call_id, context_id, ndr64, message) == expected


def test_response_pdu_leaves_what_the_reference_refuses_to_it() -> None:
    assert wire.response_pdu is not None
    too_long = bytes(0xFFFF - 24 - 12 - 4 + 1)
    with pytest.raises(LocalProtocolError):
        rpc.encode_response_pdu(2, 0, ndr.wrap_response(too_long, NDR32))
    assert wire.response_pdu(2, 0, False, too_long) is None
    assert wire.response_pdu(2, 0, False, too_long[:-4]) is not None  # fits once padded
    assert wire.response_pdu(2**32, 0, False, b"x") is None
    assert wire.response_pdu(2, 2**16, False, b"x") is None


def test_a_single_fragment_request_ends_a_pending_call_as_the_reference_says() -> None:
    """With fragments pending the session takes the reference path: the request ends the
    pending call, so a continuation afterwards has no first fragment and closes."""
    server = bound_server()
    whole = rpc.decode_pdu(request_pdu())
    assert isinstance(whole, rpc.Request)
    first = rpc.Request(2, 0, 0, whole.stub[:100], flags=rpc.PFC_FIRST_FRAG)
    last = rpc.Request(2, 0, 0, whole.stub[100:], flags=rpc.PFC_LAST_FRAG)
    assert pump(server, rpc.encode_pdu(first)) == ([], b"")
    events, answer = pump(server, request_pdu(call_id=3))
    assert [type(e) for e in events] == [ActivationServed] and answer
    events, answer = pump(server, rpc.encode_pdu(last))
    [closed] = events
    assert isinstance(closed, ConnectionClosed) and not answer
    assert "without a first fragment" in closed.reason


REPLAY = """
import json, sys
from tests.protocol.test_vectors import VECTOR_NOW, _session_for
from tests import vectors
from kmsgate.protocol import wire

def counter_random():
    state = [0]
    def draw(size):
        state[0] += 1
        return (state[0].to_bytes(4, "big") * size)[:size]
    return draw

out = {"backend": wire.WIRE_BACKEND, "answers": {}}
for name in vectors.conversation_names():
    conv = vectors.load(name)
    epid = next((e.response["epid"] for e in conv.exchanges if e.response.get("epid")), None)
    session = _session_for(conv, epid or "03612-00206-556-123727-03-1033-17763.0000-2972018")
    session._random_bytes = counter_random()
    answers = []
    for _, raw in conv.client_pdus():
        events = session.receive_data(raw, VECTOR_NOW)
        answers.append([session.data_to_send().hex(), [repr(e) for e in events]])
    out["answers"][name] = answers
json.dump(out, sys.stdout)
"""


def replay(pure: bool) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "KMSGATE_PURE_PYTHON_WIRE"}
    if pure:
        env["KMSGATE_PURE_PYTHON_WIRE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", REPLAY], cwd=ROOT, env=env, capture_output=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_the_reference_path_answers_every_vector_byte_for_byte_as_the_c_path() -> None:
    with_c, reference = replay(pure=False), replay(pure=True)
    assert with_c["backend"] == "C (abi3)"
    assert reference["backend"] == "Python (KMSGATE_PURE_PYTHON_WIRE=1)"
    assert with_c["answers"] == reference["answers"]
    answers = with_c["answers"]
    assert isinstance(answers, dict) and len(answers) == len(vectors.conversation_names())


@settings(max_examples=1000, deadline=None)
@given(data=st.one_of(st.binary(max_size=40), st.sampled_from(client_pdus())))
@example(data=bytes([5, 0, 0, 3, 0x10, 0, 0, 0, 16, 0]) + bytes(6))  # frag_length 16: the least
@example(data=bytes([5, 0, 0, 3, 0x10, 0, 0, 0, 15, 0]) + bytes(6))
@example(data=bytes([5, 1, 0, 3, 0x10, 0, 0, 0, 16, 0]) + bytes(6))
@example(data=bytes([5, 2, 0, 3, 0x10, 0, 0, 0, 16, 0]) + bytes(6))
@example(data=bytes([4, 0, 0, 3, 0x10, 0, 0, 0, 16, 0]) + bytes(6))
@example(data=bytes([5, 0, 0, 3, 0x00, 0, 0, 0, 16, 0]) + bytes(6))
def test_frag_length_is_the_references_or_none(data: bytes) -> None:
    assert wire.frag_length is not None
    try:
        expected: int | None = rpc.checked_frag_length(data)
    except RpcDecodeError:
        expected = None
    assert wire.frag_length(data) == expected
    assert wire.frag_length(bytearray(data)) == expected


def reference_response_base(*fields: object) -> bytes:
    """KmsResponse.to_bytes as the Python reference builds it from response_base's fields."""
    minor, major, epid_field, cmid, when, count, activation, renewal = fields
    return (
        struct.pack("<HH", minor, major)
        + epid_field  # type: ignore[operator]
        + struct.pack("<16sQIII", cmid.bytes_le, when, count, activation, renewal)  # type: ignore[attr-defined]
    )


def response_base_args(response: messages.KmsResponse) -> tuple[object, ...]:
    return (
        response.minor_version,
        response.major_version,
        messages._epid_field(response.epid),
        response.client_machine_id,
        response.response_time,
        response.current_client_count,
        response.activation_interval,
        response.renewal_interval,
    )


@given(
    versions=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    # No NUL inside: a response carrying one is refused when read back (the round trip below).
    epid=st.text(st.characters(exclude_characters="\x00"), max_size=31),
    cmid=st.integers(0, 2**128 - 1).map(lambda number: uuid.UUID(int=number)),
    when=st.integers(0, 2**64 - 1),
    counts=st.tuples(*[st.integers(0, 2**32 - 1)] * 3),
)
@example(versions=(0, 6), epid="", cmid=uuid.UUID(int=0), when=0, counts=(0, 0, 0))
@example(
    versions=(0xFFFF,) * 2, epid="x", cmid=uuid.UUID(int=2**128 - 1), when=2**64 - 1,
    counts=(2**32 - 1,) * 3,
)  # fmt: skip
def test_response_base_is_the_references(
    versions: tuple[int, int], epid: str, cmid: uuid.UUID, when: int, counts: tuple[int, ...]
) -> None:
    assert wire.response_base is not None
    response = messages.KmsResponse(
        versions[1], epid, cmid, when, *counts, minor_version=versions[0]
    )
    args = response_base_args(response)
    expected = reference_response_base(*args)
    assert wire.response_base(*args) == expected  # type: ignore[arg-type]
    assert response.to_bytes() == expected
    assert messages.KmsResponse.from_bytes(expected) == (response, len(expected))


@pytest.mark.parametrize(
    ("index", "bad"),
    [
        (0, 0x10000), (1, -1), (0, "6"), (1, 6.0), (3, "not a uuid"), (3, 7), (4, 2**64),
        (4, -1), (5, 2**32), (6, -(2**40)), (7, 2**32), (7, None),
    ],
)  # fmt: skip
def test_response_base_leaves_what_the_reference_refuses_to_it(index: int, bad: object) -> None:
    """None, where the reference raises its own error: never a half-built message."""
    assert wire.response_base is not None
    args = list(response_base_args(messages.KmsResponse(6, "epid", uuid.UUID(int=5), 1, 2, 3, 4)))
    args[index] = bad
    assert wire.response_base(*args) is None  # type: ignore[arg-type]
    with pytest.raises((struct.error, AttributeError)):
        reference_response_base(*args)


def test_response_base_refuses_a_wrong_call() -> None:
    assert wire.response_base is not None
    args = response_base_args(messages.KmsResponse(6, "epid", uuid.UUID(int=5), 1, 2, 3, 4))
    with pytest.raises(TypeError, match="8 arguments"):
        wire.response_base(*args[:7])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="epid field must be bytes"):
        wire.response_base(args[0], args[1], "epid", *args[3:])  # type: ignore[arg-type]
    bent = uuid.UUID(int=5)
    object.__setattr__(bent, "int", -1)
    with pytest.raises(ValueError, match=r"0 \.\. 2\*\*128-1"):
        wire.response_base(*args[:3], bent, *args[4:])  # type: ignore[arg-type]
