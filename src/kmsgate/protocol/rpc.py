"""DCE-RPC connection-oriented PDUs as KMS uses them: the wire codecs and bind negotiation.

The PDU types and constants live in pdus.py; they are re-exported here, so `rpc.Bind` and
the like name them as before.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kmsgate.protocol import pdus
from kmsgate.protocol.errors import LocalProtocolError, RpcDecodeError
from kmsgate.protocol.negotiation import Negotiation as Negotiation
from kmsgate.protocol.negotiation import negotiate as negotiate
from kmsgate.protocol.pdus import Bind as Bind
from kmsgate.protocol.pdus import BindAck as BindAck
from kmsgate.protocol.pdus import BindNak as BindNak
from kmsgate.protocol.pdus import BindNakReason as BindNakReason
from kmsgate.protocol.pdus import ContextElement as ContextElement
from kmsgate.protocol.pdus import ContextResult as ContextResult
from kmsgate.protocol.pdus import ContextResultCode as ContextResultCode
from kmsgate.protocol.pdus import Fault as Fault
from kmsgate.protocol.pdus import Pdu as Pdu
from kmsgate.protocol.pdus import PType as PType
from kmsgate.protocol.pdus import RejectReason as RejectReason
from kmsgate.protocol.pdus import Request as Request
from kmsgate.protocol.pdus import Response as Response
from kmsgate.protocol.pdus import SyntaxId as SyntaxId
from kmsgate.protocol.pdus import btfn_syntax as btfn_syntax

# pdus.py's constants, re-exported (rpc.HEADER_SIZE and the like, its classes imported
# above); assignments, as a compiled (mypyc) module binds no star import.
BTFN_KEEP_CONNECTION_ON_ORPHAN: Final = pdus.BTFN_KEEP_CONNECTION_ON_ORPHAN
BTFN_PREFIX: Final = pdus.BTFN_PREFIX
BTFN_SECURITY_CONTEXT_MULTIPLEXING: Final = pdus.BTFN_SECURITY_CONTEXT_MULTIPLEXING
DREP_LITTLE_ENDIAN: Final = pdus.DREP_LITTLE_ENDIAN
HEADER_SIZE: Final = pdus.HEADER_SIZE
KMS_INTERFACE: Final = pdus.KMS_INTERFACE
KMS_INTERFACE_SYNTAX: Final = pdus.KMS_INTERFACE_SYNTAX
NCA_OP_RNG_ERROR: Final = pdus.NCA_OP_RNG_ERROR
NCA_PROTO_ERROR: Final = pdus.NCA_PROTO_ERROR
NCA_UNK_IF: Final = pdus.NCA_UNK_IF
NDR32: Final = pdus.NDR32
NDR32_SYNTAX: Final = pdus.NDR32_SYNTAX
NDR64: Final = pdus.NDR64
NDR64_SYNTAX: Final = pdus.NDR64_SYNTAX
NULL_SYNTAX: Final = pdus.NULL_SYNTAX
PFC_CONC_MPX: Final = pdus.PFC_CONC_MPX
PFC_DID_NOT_EXECUTE: Final = pdus.PFC_DID_NOT_EXECUTE
PFC_FIRST_FRAG: Final = pdus.PFC_FIRST_FRAG
PFC_LAST_FRAG: Final = pdus.PFC_LAST_FRAG
PFC_OBJECT_UUID: Final = pdus.PFC_OBJECT_UUID
PFC_SINGLE: Final = pdus.PFC_SINGLE
RPC_X_BAD_STUB_DATA: Final = pdus.RPC_X_BAD_STUB_DATA

_HEADER: Final = struct.Struct("<BBBB4sHHI")
_BIND_BODY: Final = struct.Struct("<HHIB3x")
_CONTEXT: Final = struct.Struct("<HBx16sI16sI")
_RESULT: Final = struct.Struct("<HH16sI")
_REQUEST_BODY: Final = struct.Struct("<IHH")
_RESPONSE_BODY: Final = struct.Struct("<IHBx")
_FAULT_BODY: Final = struct.Struct("<IHBxI4x")


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
        call_id, context_id, opnum, bytes(data[stub_at:]), alloc_hint, flags, object_uuid
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
