"""DCE-RPC connection-oriented PDUs as KMS uses them: constants, enums and the PDU types.

The wire codecs and bind negotiation are in rpc.py, which re-exports every name here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "BTFN_KEEP_CONNECTION_ON_ORPHAN",
    "BTFN_PREFIX",
    "BTFN_SECURITY_CONTEXT_MULTIPLEXING",
    "DREP_LITTLE_ENDIAN",
    "HEADER_SIZE",
    "KMS_INTERFACE",
    "KMS_INTERFACE_SYNTAX",
    "NCA_OP_RNG_ERROR",
    "NCA_PROTO_ERROR",
    "NCA_UNK_IF",
    "NDR32",
    "NDR32_SYNTAX",
    "NDR64",
    "NDR64_SYNTAX",
    "NULL_SYNTAX",
    "PFC_CONC_MPX",
    "PFC_DID_NOT_EXECUTE",
    "PFC_FIRST_FRAG",
    "PFC_LAST_FRAG",
    "PFC_OBJECT_UUID",
    "PFC_SINGLE",
    "RPC_X_BAD_STUB_DATA",
    "Bind",
    "BindAck",
    "BindNak",
    "BindNakReason",
    "ContextElement",
    "ContextResult",
    "ContextResultCode",
    "Fault",
    "PType",
    "Pdu",
    "RejectReason",
    "Request",
    "Response",
    "SyntaxId",
    "btfn_syntax",
]

HEADER_SIZE: Final = 16
DREP_LITTLE_ENDIAN: Final = b"\x10\x00\x00\x00"

PFC_FIRST_FRAG: Final = 0x01
PFC_LAST_FRAG: Final = 0x02
PFC_CONC_MPX: Final = 0x10
PFC_DID_NOT_EXECUTE: Final = 0x20
PFC_OBJECT_UUID: Final = 0x80
PFC_SINGLE: Final = PFC_FIRST_FRAG | PFC_LAST_FRAG

KMS_INTERFACE: Final = uuid.UUID("51c82175-844e-4750-b0d8-ec255555bc06")
NDR32_SYNTAX: Final = uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860")
NDR64_SYNTAX: Final = uuid.UUID("71710533-beba-4937-8319-b5dbef9ccc36")
# Only the first 8 wire bytes name BTFN; the last 8 carry the requested feature bits.
BTFN_PREFIX: Final = uuid.UUID("6cb71c2c-9812-4540-0000-000000000000").bytes_le[:8]
BTFN_SECURITY_CONTEXT_MULTIPLEXING: Final = 0x0001
BTFN_KEEP_CONNECTION_ON_ORPHAN: Final = 0x0002

NCA_OP_RNG_ERROR: Final = 0x1C010002
NCA_UNK_IF: Final = 0x1C010003
NCA_PROTO_ERROR: Final = 0x1C01000B
RPC_X_BAD_STUB_DATA: Final = 0x000006F7


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


NULL_SYNTAX: Final = SyntaxId(uuid.UUID(int=0), 0)
KMS_INTERFACE_SYNTAX: Final = SyntaxId(KMS_INTERFACE, 1)
NDR32: Final = SyntaxId(NDR32_SYNTAX, 2)
NDR64: Final = SyntaxId(NDR64_SYNTAX, 1)


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


# Built for every request a host reads: a native record (values.py).
@dataclass(init=False, unsafe_hash=True, slots=True)
class Request:
    """request: one call of an operation with its marshalled stub."""

    call_id: Final[int]
    context_id: Final[int]
    opnum: Final[int]
    stub: Final[bytes]
    alloc_hint: Final[int | None]
    flags: Final[int]
    object_uuid: Final[uuid.UUID | None]

    def __init__(
        self,
        call_id: int,
        context_id: int,
        opnum: int,
        stub: bytes,
        alloc_hint: int | None = None,
        flags: int = PFC_SINGLE,
        object_uuid: uuid.UUID | None = None,
    ) -> None:
        self.call_id = call_id
        self.context_id = context_id
        self.opnum = opnum
        self.stub = stub
        self.alloc_hint = alloc_hint
        self.flags = flags
        self.object_uuid = object_uuid


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
