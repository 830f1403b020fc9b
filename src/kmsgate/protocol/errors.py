"""Typed exceptions of the protocol core; each says whose fault the error is."""

from __future__ import annotations

from kmsgate.errors import KmsgateError


class ProtocolError(KmsgateError):
    """The peer sent bytes that break the protocol (remote fault)."""


class LocalProtocolError(KmsgateError):
    """The caller asked the protocol core for something invalid (local fault)."""


class RpcDecodeError(ProtocolError):
    """A DCE-RPC PDU could not be decoded; the connection should be closed."""


class KmsMessageError(ProtocolError):
    """A KMS message is malformed; a host answers it with an HRESULT error stub."""

    def __init__(self, reason: str, hresult: int = 0x8007000D) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hresult = hresult


class VerificationError(ProtocolError):
    """A KMS response failed a strict client-side check."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


class RpcFaultError(ProtocolError):
    """The host answered a call with an RPC fault PDU."""

    def __init__(self, status: int) -> None:
        super().__init__(f"RPC fault 0x{status:08X}")
        self.status = status


class ActivationError(ProtocolError):
    """The host answered with an HRESULT other than success."""

    def __init__(self, hresult: int, text: str) -> None:
        super().__init__(text)
        self.hresult = hresult


class FramingError(RpcDecodeError):
    """A byte stream is not DCE-RPC: no trustworthy PDU header where one must start."""
