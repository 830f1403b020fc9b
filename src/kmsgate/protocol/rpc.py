"""DCE-RPC connection-oriented PDUs as KMS uses them: codecs and bind negotiation."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from kmsgate.protocol.errors import LocalProtocolError, RpcDecodeError

HEADER_SIZE = 16
DREP_LITTLE_ENDIAN = b"\x10\x00\x00\x00"

PFC_FIRST_FRAG = 0x01
PFC_LAST_FRAG = 0x02
PFC_CONC_MPX = 0x10
PFC_DID_NOT_EXECUTE = 0x20
PFC_OBJECT_UUID = 0x80
PFC_SINGLE = PFC_FIRST_FRAG | PFC_LAST_FRAG

KMS_INTERFACE = uuid.UUID("51c82175-844e-4750-b0d8-ec255555bc06")
NDR32_SYNTAX = uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860")
NDR64_SYNTAX = uuid.UUID("71710533-beba-4937-8319-b5dbef9ccc36")
# Only the first 8 wire bytes name BTFN; the last 8 carry the requested feature bits.
BTFN_PREFIX = uuid.UUID("6cb71c2c-9812-4540-0000-000000000000").bytes_le[:8]
BTFN_SECURITY_CONTEXT_MULTIPLEXING = 0x0001
BTFN_KEEP_CONNECTION_ON_ORPHAN = 0x0002

NCA_OP_RNG_ERROR = 0x1C010002
NCA_UNK_IF = 0x1C010003
NCA_PROTO_ERROR = 0x1C01000B
RPC_X_BAD_STUB_DATA = 0x000006F7

_HEADER = struct.Struct("<BBBB4sHHI")
_BIND_BODY = struct.Struct("<HHIB3x")
_CONTEXT = struct.Struct("<HBx16sI16sI")
_RESULT = struct.Struct("<HH16sI")
_REQUEST_BODY = struct.Struct("<IHH")
_RESPONSE_BODY = struct.Struct("<IHBx")
_FAULT_BODY = struct.Struct("<IHBxI4x")


class PType(IntEnum):
    """PDU types of the connection-oriented protocol."""

    REQUEST = 0
    RESPONSE = 2
    FAULT = 3
    BIND = 11
    BIND_ACK = 12
    BIND_NAK = 13
    ALTER_CONTEXT = 14
    ALTER_CONTEXT_RESP = 15


class ContextResultCode(IntEnum):
    """`result` of one presentation context in bind_ack."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    PROVIDER_REJECTION = 2
    NEGOTIATE_ACK = 3


class RejectReason(IntEnum):
    """`reason` of a rejected presentation context."""

    NOT_SPECIFIED = 0
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 1
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 2


class BindNakReason(IntEnum):
    """`provider_reject_reason` of a bind_nak."""

    NOT_SPECIFIED = 0
    TEMPORARY_CONGESTION = 1
    LOCAL_LIMIT_EXCEEDED = 2
    PROTOCOL_VERSION_NOT_SUPPORTED = 4


@dataclass(frozen=True, slots=True)
class SyntaxId:
    """An interface or transfer syntax: UUID plus a 32-bit version (major | minor << 16)."""

    uuid: uuid.UUID
    version: int

    @property
    def is_btfn(self) -> bool:
        return self.uuid.bytes_le[:8] == BTFN_PREFIX

    @property
    def btfn_bits(self) -> int:
        return int.from_bytes(self.uuid.bytes_le[8:10], "little")


NULL_SYNTAX = SyntaxId(uuid.UUID(int=0), 0)
KMS_INTERFACE_SYNTAX = SyntaxId(KMS_INTERFACE, 1)
NDR32 = SyntaxId(NDR32_SYNTAX, 2)
NDR64 = SyntaxId(NDR64_SYNTAX, 1)


def btfn_syntax(bits: int) -> SyntaxId:
    """The BTFN pseudo transfer syntax asking for feature `bits`."""
    return SyntaxId(uuid.UUID(bytes_le=BTFN_PREFIX + bits.to_bytes(2, "little") + bytes(6)), 1)


@dataclass(frozen=True, slots=True)
class ContextElement:
    """One proposed presentation context of a bind or alter_context."""

    context_id: int
    abstract_syntax: SyntaxId
    transfer_syntaxes: tuple[SyntaxId, ...]


@dataclass(frozen=True, slots=True)
class ContextResult:
    """The server's answer for one proposed context."""

    result: int
    reason: int
    transfer_syntax: SyntaxId = NULL_SYNTAX


@dataclass(frozen=True, slots=True)
class Bind:
    """bind (or alter_context when `alter` is true)."""

    call_id: int
    contexts: tuple[ContextElement, ...]
    max_xmit_frag: int = 5840
    max_recv_frag: int = 5840
    assoc_group_id: int = 0
    flags: int = PFC_SINGLE | PFC_CONC_MPX
    alter: bool = False
    minor_version: int = 0


@dataclass(frozen=True, slots=True)
class BindAck:
    """bind_ack (or alter_context_resp when `alter` is true)."""

    call_id: int
    results: tuple[ContextResult, ...]
    max_xmit_frag: int = 5840
    max_recv_frag: int = 5840
    assoc_group_id: int = 0
    secondary_address: str = ""
    flags: int = PFC_SINGLE
    alter: bool = False


@dataclass(frozen=True, slots=True)
class BindNak:
    """bind_nak: the bind is refused as a whole."""

    call_id: int
    reason: int
    versions: tuple[tuple[int, int], ...] = ((5, 0),)
    flags: int = PFC_SINGLE


@dataclass(frozen=True, slots=True)
class Request:
    """request: one call of an operation with its marshalled stub."""

    call_id: int
    context_id: int
    opnum: int
    stub: bytes
    alloc_hint: int | None = None
    flags: int = PFC_SINGLE
    object_uuid: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """response: the marshalled result of a request."""

    call_id: int
    context_id: int
    stub: bytes
    alloc_hint: int | None = None
    cancel_count: int = 0
    flags: int = PFC_SINGLE


@dataclass(frozen=True, slots=True)
class Fault:
    """fault: the call failed at the RPC level with an NCA status code."""

    call_id: int
    status: int
    context_id: int = 0
    alloc_hint: int = 0
    cancel_count: int = 0
    flags: int = PFC_SINGLE | PFC_DID_NOT_EXECUTE


Pdu = Bind | BindAck | BindNak | Request | Response | Fault


@dataclass(frozen=True, slots=True)
class PduHeader:
    """The 16-byte common header."""

    version: int
    minor_version: int
    ptype: int
    flags: int
    drep: bytes
    frag_length: int
    auth_length: int
    call_id: int


def parse_header(data: bytes | bytearray) -> PduHeader:
    """Decode and sanity-check a common header (at least 16 bytes of `data`)."""
    if len(data) < HEADER_SIZE:
        raise RpcDecodeError(f"PDU header needs {HEADER_SIZE} bytes, got {len(data)}")
    ver, minor, ptype, flags, drep, frag_length, auth_length, call_id = _HEADER.unpack_from(data)
    _check_header(ver, minor, drep, frag_length)
    return PduHeader(ver, minor, ptype, flags, drep, frag_length, auth_length, call_id)


def checked_frag_length(data: bytes | bytearray) -> int:
    """The frag_length of a common header, after parse_header's checks (no PduHeader built)."""
    if len(data) < HEADER_SIZE:
        raise RpcDecodeError(f"PDU header needs {HEADER_SIZE} bytes, got {len(data)}")
    ver, minor, _, _, drep, frag_length, _, _ = _HEADER.unpack_from(data)
    _check_header(ver, minor, drep, frag_length)
    return int(frag_length)


def _check_header(ver: int, minor: int, drep: bytes, frag_length: int) -> None:
    if ver != 5 or minor > 1:
        raise RpcDecodeError(f"unsupported RPC version {ver}.{minor}")
    if drep[0] & 0xF0 != 0x10 or drep[0] & 0x0F != 0:
        raise RpcDecodeError(f"unsupported data representation {drep.hex()}")
    if frag_length < HEADER_SIZE:
        raise RpcDecodeError(f"frag_length {frag_length} shorter than the header")


def _header(ptype: PType, flags: int, length: int, call_id: int, minor: int = 0) -> bytes:
    if length > 0xFFFF:
        raise LocalProtocolError(f"PDU of {length} bytes exceeds frag_length range")
    return _HEADER.pack(5, minor, ptype, flags, DREP_LITTLE_ENDIAN, length, 0, call_id)


def _syntax(raw: bytes) -> SyntaxId:
    return SyntaxId(uuid.UUID(bytes_le=raw[:16]), int.from_bytes(raw[16:20], "little"))


def _pack_syntax(syntax: SyntaxId) -> bytes:
    return syntax.uuid.bytes_le + syntax.version.to_bytes(4, "little")


def _decode_bind(header: PduHeader, body: bytes) -> Bind:
    if len(body) < _BIND_BODY.size:
        raise RpcDecodeError("bind body too short")
    max_xmit, max_recv, assoc, count = _BIND_BODY.unpack_from(body)
    offset = _BIND_BODY.size
    contexts = []
    for _ in range(count):
        if len(body) < offset + 4:
            raise RpcDecodeError("bind truncated inside a context element")
        context_id, n_syntaxes = struct.unpack_from("<HB", body, offset)
        end = offset + 24 + 20 * n_syntaxes
        if n_syntaxes == 0 or len(body) < end:
            raise RpcDecodeError("bind context element truncated or without transfer syntax")
        abstract = _syntax(body[offset + 4 : offset + 24])
        transfers = tuple(_syntax(body[pos : pos + 20]) for pos in range(offset + 24, end, 20))
        contexts.append(ContextElement(context_id, abstract, transfers))
        offset = end
    return Bind(
        call_id=header.call_id,
        contexts=tuple(contexts),
        max_xmit_frag=max_xmit,
        max_recv_frag=max_recv,
        assoc_group_id=assoc,
        flags=header.flags,
        alter=header.ptype == PType.ALTER_CONTEXT,
        minor_version=header.minor_version,
    )


def _encode_bind(pdu: Bind) -> bytes:
    body = bytearray(
        _BIND_BODY.pack(pdu.max_xmit_frag, pdu.max_recv_frag, pdu.assoc_group_id, len(pdu.contexts))
    )
    for ctx in pdu.contexts:
        body += struct.pack("<HBx", ctx.context_id, len(ctx.transfer_syntaxes))
        body += _pack_syntax(ctx.abstract_syntax)
        for syntax in ctx.transfer_syntaxes:
            body += _pack_syntax(syntax)
    ptype = PType.ALTER_CONTEXT if pdu.alter else PType.BIND
    length = HEADER_SIZE + len(body)
    return _header(ptype, pdu.flags, length, pdu.call_id, pdu.minor_version) + body


def _decode_bind_ack(header: PduHeader, body: bytes) -> BindAck:
    if len(body) < 10:
        raise RpcDecodeError("bind_ack body too short")
    max_xmit, max_recv, assoc, addr_len = struct.unpack_from("<HHIH", body)
    addr_end = 10 + addr_len
    if len(body) < addr_end:
        raise RpcDecodeError("bind_ack secondary address truncated")
    raw_addr = body[10:addr_end]
    # Alignment is relative to the PDU start, which is HEADER_SIZE bytes before the body.
    results_at = (HEADER_SIZE + addr_end + 3) // 4 * 4 - HEADER_SIZE
    if len(body) < results_at + 4:
        raise RpcDecodeError("bind_ack result list missing")
    count = body[results_at]
    start = results_at + 4
    if len(body) < start + _RESULT.size * count:
        raise RpcDecodeError("bind_ack result list truncated")
    results = []
    for index in range(count):
        result, reason, syntax_uuid, version = _RESULT.unpack_from(
            body, start + index * _RESULT.size
        )
        results.append(
            ContextResult(result, reason, SyntaxId(uuid.UUID(bytes_le=syntax_uuid), version))
        )
    return BindAck(
        call_id=header.call_id,
        results=tuple(results),
        max_xmit_frag=max_xmit,
        max_recv_frag=max_recv,
        assoc_group_id=assoc,
        secondary_address=raw_addr.rstrip(b"\x00").decode("ascii", "replace"),
        flags=header.flags,
        alter=header.ptype == PType.ALTER_CONTEXT_RESP,
    )


def _encode_bind_ack(pdu: BindAck) -> bytes:
    addr = pdu.secondary_address.encode("ascii") + b"\x00" if pdu.secondary_address else b""
    body = bytearray(
        struct.pack("<HHIH", pdu.max_xmit_frag, pdu.max_recv_frag, pdu.assoc_group_id, len(addr))
    )
    body += addr
    body += bytes(-(HEADER_SIZE + len(body)) % 4)
    body += struct.pack("<B3x", len(pdu.results))
    for res in pdu.results:
        body += _RESULT.pack(
            res.result, res.reason, res.transfer_syntax.uuid.bytes_le, res.transfer_syntax.version
        )
    ptype = PType.ALTER_CONTEXT_RESP if pdu.alter else PType.BIND_ACK
    return _header(ptype, pdu.flags, HEADER_SIZE + len(body), pdu.call_id) + body


def _decode_bind_nak(header: PduHeader, body: bytes) -> BindNak:
    if len(body) < 3:
        raise RpcDecodeError("bind_nak body too short")
    reason, count = struct.unpack_from("<HB", body)
    if len(body) < 3 + 2 * count:
        raise RpcDecodeError("bind_nak version list truncated")
    versions = tuple((body[3 + 2 * i], body[4 + 2 * i]) for i in range(count))
    return BindNak(header.call_id, reason, versions, header.flags)


def _encode_bind_nak(pdu: BindNak) -> bytes:
    body = struct.pack("<HB", pdu.reason, len(pdu.versions))
    body += b"".join(bytes(v) for v in pdu.versions)
    body += bytes(-(HEADER_SIZE + len(body)) % 4)
    return _header(PType.BIND_NAK, pdu.flags, HEADER_SIZE + len(body), pdu.call_id) + body


def _decode_request(flags: int, call_id: int, data: bytes) -> Request:
    """The request in a whole PDU whose common header is checked (`data` from its start)."""
    stub_at = HEADER_SIZE + _REQUEST_BODY.size
    if len(data) < stub_at:
        raise RpcDecodeError("request body too short")
    alloc_hint, context_id, opnum = _REQUEST_BODY.unpack_from(data, HEADER_SIZE)
    object_uuid = None
    if flags & PFC_OBJECT_UUID:
        if len(data) < stub_at + 16:
            raise RpcDecodeError("request object UUID truncated")
        object_uuid = uuid.UUID(bytes_le=bytes(data[stub_at : stub_at + 16]))
        stub_at += 16
    return Request(
        call_id=call_id,
        context_id=context_id,
        opnum=opnum,
        stub=bytes(data[stub_at:]),
        alloc_hint=alloc_hint,
        flags=flags,
        object_uuid=object_uuid,
    )


def decode_request_pdu(data: bytes) -> Pdu:
    """decode_pdu for a PDU whose type byte says request: the same result or error, without
    building a PduHeader (the host's path for every request)."""
    if len(data) < HEADER_SIZE or data[2] != PType.REQUEST:
        return decode_pdu(data)
    ver, minor, _, flags, drep, frag_length, auth_length, call_id = _HEADER.unpack_from(data)
    _check_header(ver, minor, drep, frag_length)
    _check_whole(frag_length, auth_length, len(data))
    return _decode_request(flags, call_id, data)


def _encode_request(pdu: Request) -> bytes:
    # The flag must say exactly whether an object UUID follows, whatever the caller passed.
    flags = pdu.flags & ~PFC_OBJECT_UUID
    if pdu.object_uuid is not None:
        flags |= PFC_OBJECT_UUID
    alloc_hint = len(pdu.stub) if pdu.alloc_hint is None else pdu.alloc_hint
    body = _REQUEST_BODY.pack(alloc_hint, pdu.context_id, pdu.opnum)
    if pdu.object_uuid is not None:
        body += pdu.object_uuid.bytes_le
    body += pdu.stub
    return _header(PType.REQUEST, flags, HEADER_SIZE + len(body), pdu.call_id) + body


def _decode_response(header: PduHeader, body: bytes) -> Response:
    if len(body) < _RESPONSE_BODY.size:
        raise RpcDecodeError("response body too short")
    alloc_hint, context_id, cancel_count = _RESPONSE_BODY.unpack_from(body)
    return Response(
        call_id=header.call_id,
        context_id=context_id,
        stub=body[_RESPONSE_BODY.size :],
        alloc_hint=alloc_hint,
        cancel_count=cancel_count,
        flags=header.flags,
    )


def _encode_response(pdu: Response) -> bytes:
    alloc_hint = len(pdu.stub) if pdu.alloc_hint is None else pdu.alloc_hint
    body = _RESPONSE_BODY.pack(alloc_hint, pdu.context_id, pdu.cancel_count) + pdu.stub
    return _header(PType.RESPONSE, pdu.flags, HEADER_SIZE + len(body), pdu.call_id) + body


def encode_response_pdu(call_id: int, context_id: int, stub: bytes) -> bytes:
    """encode_pdu(Response(call_id, context_id, stub)) without building the Response."""
    length = HEADER_SIZE + _RESPONSE_BODY.size + len(stub)
    return (
        _header(PType.RESPONSE, PFC_SINGLE, length, call_id)
        + _RESPONSE_BODY.pack(len(stub), context_id, 0)
        + stub
    )


def _decode_fault(header: PduHeader, body: bytes) -> Fault:
    if len(body) < _FAULT_BODY.size:
        raise RpcDecodeError("fault body too short")
    alloc_hint, context_id, cancel_count, status = _FAULT_BODY.unpack_from(body)
    return Fault(header.call_id, status, context_id, alloc_hint, cancel_count, header.flags)


def _encode_fault(pdu: Fault) -> bytes:
    body = _FAULT_BODY.pack(pdu.alloc_hint, pdu.context_id, pdu.cancel_count, pdu.status)
    return _header(PType.FAULT, pdu.flags, HEADER_SIZE + len(body), pdu.call_id) + body


_DECODERS: dict[int, Callable[[PduHeader, bytes], Pdu]] = {
    PType.BIND: _decode_bind,
    PType.ALTER_CONTEXT: _decode_bind,
    PType.BIND_ACK: _decode_bind_ack,
    PType.ALTER_CONTEXT_RESP: _decode_bind_ack,
    PType.BIND_NAK: _decode_bind_nak,
    PType.RESPONSE: _decode_response,
    PType.FAULT: _decode_fault,
}


def _check_whole(frag_length: int, auth_length: int, size: int) -> None:
    if frag_length != size:
        raise RpcDecodeError(f"frag_length {frag_length} but {size} bytes given")
    if auth_length:
        raise RpcDecodeError("authenticated PDUs are not used by KMS")


def decode_pdu(data: bytes) -> Pdu:
    """Decode exactly one complete PDU; raise RpcDecodeError on anything malformed."""
    header = parse_header(data)
    _check_whole(header.frag_length, header.auth_length, len(data))
    if header.ptype == PType.REQUEST:
        return _decode_request(header.flags, header.call_id, data)
    decoder = _DECODERS.get(header.ptype)
    if decoder is None:
        raise RpcDecodeError(f"unknown PDU type {header.ptype}")
    return decoder(header, bytes(data[HEADER_SIZE:]))


def encode_pdu(pdu: Pdu) -> bytes:
    """Encode one PDU as a single fragment."""
    if isinstance(pdu, Bind):
        return _encode_bind(pdu)
    if isinstance(pdu, BindAck):
        return _encode_bind_ack(pdu)
    if isinstance(pdu, BindNak):
        return _encode_bind_nak(pdu)
    if isinstance(pdu, Request):
        return _encode_request(pdu)
    if isinstance(pdu, Response):
        return _encode_response(pdu)
    return _encode_fault(pdu)


@dataclass(frozen=True, slots=True)
class Negotiation:
    """Outcome of one bind/alter_context: per-context results and the contexts learned."""

    results: tuple[ContextResult, ...]
    ndr32_context: int | None = None
    ndr64_context: int | None = None
    btfn_bits: int | None = None


def negotiate(contexts: tuple[ContextElement, ...], *, ndr64: bool, btfn: bool) -> Negotiation:
    """Answer proposed contexts the way a KMS host does (spec §5.1).

    NDR64 is preferred: when a PDU offers both, NDR32 is rejected in the bind_ack, yet its
    context id stays usable, which is what genuine clients rely on for their first request.
    """
    ndr32_context = None
    ndr64_context = None
    for ctx in contexts:
        syntax = ctx.transfer_syntaxes[0]
        if ctx.abstract_syntax.uuid != KMS_INTERFACE:
            continue
        if syntax == NDR32:
            ndr32_context = ctx.context_id
        elif ndr64 and syntax == NDR64:
            ndr64_context = ctx.context_id
    results = []
    btfn_bits = None
    for ctx in contexts:
        syntax = ctx.transfer_syntaxes[0]
        is_kms = ctx.abstract_syntax.uuid == KMS_INTERFACE
        reason = (
            RejectReason.TRANSFER_SYNTAXES_NOT_SUPPORTED
            if is_kms
            else RejectReason.ABSTRACT_SYNTAX_NOT_SUPPORTED
        )
        if is_kms and syntax == NDR32 and ndr64_context is None:
            results.append(ContextResult(ContextResultCode.ACCEPTANCE, 0, NDR32))
        elif is_kms and syntax == NDR64 and ndr64_context is not None:
            results.append(ContextResult(ContextResultCode.ACCEPTANCE, 0, NDR64))
        elif syntax.is_btfn and btfn:
            btfn_bits = syntax.btfn_bits & (
                BTFN_SECURITY_CONTEXT_MULTIPLEXING | BTFN_KEEP_CONNECTION_ON_ORPHAN
            )
            results.append(ContextResult(ContextResultCode.NEGOTIATE_ACK, btfn_bits))
        else:
            if syntax.is_btfn:
                reason = RejectReason.TRANSFER_SYNTAXES_NOT_SUPPORTED
            results.append(ContextResult(ContextResultCode.PROVIDER_REJECTION, reason))
    return Negotiation(tuple(results), ndr32_context, ndr64_context, btfn_bits)
