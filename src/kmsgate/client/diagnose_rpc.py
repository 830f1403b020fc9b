"""The rpc step: send the RPC bind and tell a KMS host from a web, TLS or other service."""

from __future__ import annotations

import asyncio
from typing import Any

from kmsgate.client.diagnose_report import Finding, error_finding
from kmsgate.protocol.client_session import ClientSession
from kmsgate.protocol.errors import FramingError, ProtocolError
from kmsgate.protocol.events import BindRejected, ClientEvent
from kmsgate.protocol.hresult import HResult

__all__ = ["check_bind", "classify_non_rpc"]

_READ_SIZE = 4096
_SNIFF_BYTES = 512


def classify_non_rpc(data: bytes) -> tuple[str, str]:
    """(what the service is, why) for bytes that are not a DCE-RPC answer."""
    if data.startswith(b"HTTP/"):
        status = data.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        return "http", f"that port speaks HTTP, not KMS (it answered {status!r})"
    if len(data) >= 3 and data[0] in (0x15, 0x16) and data[1] == 0x03:
        return "tls", "that port speaks TLS, not KMS (it answered with a TLS record)"
    if data.startswith(b"SSH-"):
        return "ssh", "that port is an SSH server, not KMS"
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if line and all(32 <= b < 127 for b in line):
        text = line[:80].decode("ascii")
        return "text", f"that port speaks a text protocol, not KMS (it said {text!r})"
    return "binary", f"that port answered {len(data)} bytes that are not DCE-RPC"


_CLOSED_EXPLANATION = (
    "The service accepted the connection but closed it without answering the RPC bind. "
    "kmsgate does this for an address outside its source policy (allow/deny), in gateway "
    "mode when no activation window is open for the address (log in on the portal first), "
    "and at max_connections; any other service may do it too. Windows reports 0x800706BA."
)


async def check_bind(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    session: ClientSession,
    *,
    where: str,
    timeout: float,
) -> Finding:
    """Send the RPC bind (NDR32, NDR64, BTFN) and say what came back."""
    seen = bytearray()

    async def answer(what: str) -> ClientEvent | None:
        """Send what the session queued until its answer; None when the reply is not RPC."""
        data = b""
        while True:
            try:
                events = session.receive_data(data)
            except FramingError:
                return None
            if outgoing := session.data_to_send():
                writer.write(outgoing)
            if events:
                return events[0]
            if session.awaiting_alter_context:
                what = "alter_context"
            data = await reader.read(_READ_SIZE)
            if not data:
                raise ConnectionResetError(f"closed during the {what}")
            if len(seen) < _SNIFF_BYTES:
                seen.extend(data[: _SNIFF_BYTES - len(seen)])

    hresult = HResult.RPC_SERVER_UNAVAILABLE
    try:
        async with asyncio.timeout(timeout):
            session.send_bind()
            event = await answer("bind")
            if isinstance(event, BindRejected):
                return error_finding(
                    "rpc",
                    f"{where} refused the RPC bind (bind_nak, reason {event.reason})",
                    "An RPC server answered but refused the bind as a whole: it is not a KMS "
                    "host, or it is overloaded (reason 1 or 2).",
                    "Point the client at the KMS host's address and port.",
                    hresult=hresult,
                    details={"bind_nak_reason": event.reason},
                )
    except TimeoutError:
        if seen:
            kind, why = classify_non_rpc(bytes(seen))
            return _not_kms(where, kind, why, bytes(seen))
        return error_finding(
            "rpc",
            f"{where} did not answer the RPC bind within {timeout:g} s",
            "The service accepted the connection but stayed silent: it waits for another "
            "protocol (a web or TLS server waiting for its request), or it is overloaded.",
            "Check that the port belongs to the KMS host (`ss -ltnp` on the host).",
            hresult=hresult,
        )
    except (ConnectionResetError, OSError) as exc:
        if seen:
            kind, why = classify_non_rpc(bytes(seen))
            return _not_kms(where, kind, why, bytes(seen))
        return error_finding(
            "rpc",
            f"{where} closed the connection without answering the bind",
            _CLOSED_EXPLANATION,
            "Check the host's log for this machine's address (`kmsgate` logs why it closed "
            "a connection), the source policy and, in gateway mode, the portal login.",
            hresult=hresult,
            details={"reason": str(exc)},
        )
    except ProtocolError as exc:
        return error_finding(
            "rpc",
            f"{where} answered the bind with an invalid RPC reply",
            f"The reply is DCE-RPC but breaks the protocol: {exc}. A genuine or emulated KMS "
            "host does not do this; something else listens there.",
            "Point the client at the KMS host's address and port.",
            hresult=hresult,
        )
    if event is None:
        kind, why = classify_non_rpc(bytes(seen))
        return _not_kms(where, kind, why, bytes(seen))
    details: dict[str, Any] = {
        "ndr32": session.ndr32_accepted,
        "ndr64": session.ndr64_accepted,
        "btfn": session.btfn_bits,
        "warnings": list(session.warnings),
    }
    syntaxes = [
        name
        for name, accepted in (("NDR32", session.ndr32_accepted), ("NDR64", session.ndr64_accepted))
        if accepted
    ]
    btfn = "acknowledged" if session.btfn_bits is not None else "not acknowledged"
    title = f"RPC bind accepted: {' and '.join(syntaxes)}, BTFN {btfn}"
    explanation = (
        "The service speaks DCE-RPC and accepts the KMS interface. Windows 8 and later "
        "offer NDR64 and bind-time feature negotiation; older clients use NDR32 only, so "
        "a host without NDR64 still serves everyone."
    )
    if session.warnings:
        return Finding(
            "rpc",
            "warning",
            title,
            explanation + " Oddities: " + "; ".join(session.warnings) + ".",
            "Genuine clients tolerate these, but a genuine host does not produce them.",
            details=details,
        )
    return Finding("rpc", "ok", title, explanation, details=details)


def _not_kms(where: str, kind: str, why: str, seen: bytes) -> Finding:
    return error_finding(
        "rpc",
        f"{where}: {why}",
        "A KMS host answers the RPC bind with a bind_ack; this service answered something "
        "else, so clients fail with 0x800706BA. Often the port of a web server, a proxy or "
        "the dashboard was given instead of the KMS port (1688 by default).",
        "Use the KMS host's address and KMS port (`slmgr /skms HOST:1688`).",
        hresult=HResult.RPC_SERVER_UNAVAILABLE,
        details={"service": kind, "first_bytes": seen[:64].hex()},
    )
