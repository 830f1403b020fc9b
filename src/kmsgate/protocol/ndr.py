"""How the KMS byte array travels as NDR32 or NDR64 stub data of RequestActivation."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import Final

from kmsgate.protocol.errors import KmsMessageError, ProtocolError

# The out-array is a [unique] pointer; Windows and vlmcsd both use this referent id.
RESPONSE_REFERENT: Final = 0x00020000
MAX_KMS_MESSAGE: Final = 4096


class TransferSyntax(Enum):
    """The two NDR transfer syntaxes a KMS host accepts."""

    NDR32 = "NDR32"
    NDR64 = "NDR64"

    @property
    def word(self) -> struct.Struct:
        return _U32 if self is TransferSyntax.NDR32 else _U64


_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")


def _pad4(length: int) -> bytes:
    return bytes(-length % 4)


def wrap_request(message: bytes, syntax: TransferSyntax) -> bytes:
    """Marshal a KMS request message: size, conformance, bytes."""
    word = syntax.word
    return word.pack(len(message)) + word.pack(len(message)) + message


def unwrap_request(stub: bytes, syntax: TransferSyntax) -> bytes:
    """Unmarshal the in-array of RequestActivation; bad stubs raise KmsMessageError."""
    word = syntax.word
    head = 2 * word.size
    if len(stub) < head:
        raise KmsMessageError(f"{syntax.value} request stub of {len(stub)} bytes is truncated")
    (size,) = word.unpack_from(stub, 0)
    (conformance,) = word.unpack_from(stub, word.size)
    if size != conformance:
        raise KmsMessageError(f"request size {size} differs from array conformance {conformance}")
    if size > len(stub) - head:
        raise KmsMessageError(f"request declares {size} bytes but carries {len(stub) - head}")
    if size > MAX_KMS_MESSAGE:
        raise KmsMessageError(f"request message of {size} bytes is larger than any KMS message")
    return stub[head : head + size]


def wrap_response(message: bytes, syntax: TransferSyntax, hresult: int = 0) -> bytes:
    """Marshal a KMS response: size, referent, conformance, bytes, return value, pad."""
    word = syntax.word
    size = word.pack(len(message))
    body = size + word.pack(RESPONSE_REFERENT) + size + message + _U32.pack(hresult)
    return body + _pad4(len(body))


def wrap_error(hresult: int, syntax: TransferSyntax) -> bytes:
    """Marshal a failed call: zero size, null referent, the HRESULT (spec §7.2)."""
    word = syntax.word
    return word.pack(0) + word.pack(0) + _U32.pack(hresult)


@dataclass(frozen=True, slots=True)
class ResponseStub:
    """A decoded RequestActivation result: the message (None on error) and the HRESULT."""

    message: bytes | None
    hresult: int
    warnings: tuple[str, ...] = ()


def unwrap_response(stub: bytes, syntax: TransferSyntax) -> ResponseStub:
    """Unmarshal a response stub strictly; structural problems raise ProtocolError."""
    word = syntax.word
    if len(stub) < 2 * word.size + 4:
        raise ProtocolError(f"{syntax.value} response stub of {len(stub)} bytes is truncated")
    (size,) = word.unpack_from(stub, 0)
    (referent,) = word.unpack_from(stub, word.size)
    if referent == 0:
        (hresult,) = _U32.unpack_from(stub, 2 * word.size)
        return ResponseStub(None, hresult)
    head = 3 * word.size
    if len(stub) < head + 4:
        raise ProtocolError("response stub truncated before the array")
    (conformance,) = word.unpack_from(stub, 2 * word.size)
    if size != conformance:
        raise ProtocolError(f"response size {size} differs from conformance {conformance}")
    if len(stub) < head + size + 4:
        raise ProtocolError(f"response declares {size} bytes but the stub is {len(stub)} bytes")
    message = stub[head : head + size]
    (hresult,) = _U32.unpack_from(stub, head + size)
    warnings = []
    if referent != RESPONSE_REFERENT:
        warnings.append(f"unusual referent id 0x{referent:08x}")
    trailer = stub[head + size + 4 :]
    if len(trailer) != len(_pad4(head + size + 4)):
        warnings.append(f"{len(trailer)} trailing bytes after the return value")
    elif any(trailer):
        warnings.append("non-zero padding after the return value")
    return ResponseStub(message, hresult, tuple(warnings))
