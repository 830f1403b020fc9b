"""The strict client's typed failures and the one-line reason the CLI prints for each."""

from __future__ import annotations

from collections.abc import Sequence

from kmsgate.client.exchange import ActivationResult
from kmsgate.errors import KmsgateError
from kmsgate.protocol.errors import (
    ActivationError,
    ProtocolError,
    RpcFaultError,
    VerificationError,
)
from kmsgate.protocol.hresult import HResult, describe

__all__ = [
    "ConnectionClosedError",
    "KmsClientError",
    "KmsConnectionError",
    "KmsTimeoutError",
    "NoHostReachableError",
    "ResponseVerificationError",
    "WrongProtocolError",
    "describe_error",
    "foreign_protocol",
]


class KmsClientError(KmsgateError):
    """The client could not complete an exchange; `hresult` is what Windows would report."""

    hresult: int = HResult.NO_KMS_CONTACTED


class KmsConnectionError(KmsClientError):
    """No RPC conversation was possible: refused, unreachable or unresolvable host.

    Maps to 0x800706BA (RPC server unavailable); a Windows client that finds no usable host
    ends with 0xC004F074, kept in `activation_hresult`.
    """

    hresult = HResult.RPC_SERVER_UNAVAILABLE
    activation_hresult = HResult.NO_KMS_CONTACTED
    errno: int | None = None


class KmsTimeoutError(KmsConnectionError):
    """The host did not answer (connect, bind or request) within the timeout."""


class ConnectionClosedError(KmsConnectionError):
    """The host closed the connection before answering."""


class WrongProtocolError(KmsConnectionError):
    """The port answered in another protocol (HTTP, TLS, SSH): it is not a KMS host."""

    def __init__(self, where: str, protocol: str) -> None:
        hint = _WRONG_PROTOCOL_HINTS.get(protocol, "")
        super().__init__(f"{where}: that port speaks {protocol}, not KMS{hint}")
        self.protocol = protocol


# First bytes of other protocols' replies to our bind; a KMS host answers with RPC version 5.
_FOREIGN_REPLIES = ((b"HTTP/", "HTTP"), (b"SSH-", "SSH"), (b"\x15\x03", "TLS"))
_WRONG_PROTOCOL_HINTS = {
    "HTTP": " (a web server, such as the kmsgate dashboard? KMS hosts listen on port 1688)",
    "TLS": " (a TLS service; KMS is plain RPC over TCP, usually on port 1688)",
}


def foreign_protocol(first_bytes: bytes) -> str | None:
    """The protocol a reply's first bytes belong to when it is not DCE-RPC, else None."""
    for prefix, name in _FOREIGN_REPLIES:
        if first_bytes.startswith(prefix):
            return name
    return None


class NoHostReachableError(KmsConnectionError):
    """Every candidate host failed at the connection level (0xC004F074 for Windows)."""

    hresult = HResult.NO_KMS_CONTACTED

    def __init__(self, attempts: Sequence[tuple[str, KmsConnectionError]]) -> None:
        tried = "; ".join(f"{where}: {exc}" for where, exc in attempts) or "no address to try"
        super().__init__(f"no KMS host answered ({tried})")
        self.attempts = tuple(attempts)


class ResponseVerificationError(VerificationError):
    """A response failed a fatal check; `result` holds the response and every check made."""

    def __init__(self, result: ActivationResult) -> None:
        failed = next(c for c in result.checks if c.fatal and not c.passed)
        super().__init__(failed.name, failed.detail)
        self.result = result


def describe_error(exc: BaseException) -> str:
    """One-line reason for a client failure, as the CLI prints it after `error: `."""
    if isinstance(exc, VerificationError):
        return f"check {exc.check} failed: {exc.detail}"
    if isinstance(exc, RpcFaultError):
        return f"RPC fault {describe(exc.status)}"
    if isinstance(exc, ActivationError):
        return f"host returned {describe(exc.hresult)}"
    if isinstance(exc, KmsConnectionError):
        return f"{exc}; {describe(exc.hresult)}"
    if isinstance(exc, ProtocolError):
        return f"protocol error: {exc}"
    return str(exc)
