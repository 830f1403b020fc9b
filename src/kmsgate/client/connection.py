"""One bound TCP connection to a KMS host: connect, bind, send requests, verify answers.

All parsing and checking lives in the sans-IO protocol core (ClientSession, verify_response);
this module only owns the socket and its timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field

from kmsgate.client.errors import (
    ConnectionClosedError,
    KmsConnectionError,
    KmsTimeoutError,
    ResponseVerificationError,
    WrongProtocolError,
    foreign_protocol,
)
from kmsgate.client.exchange import ActivationResult
from kmsgate.net import Endpoint
from kmsgate.protocol.client_session import (
    ClientSession,
    expect_bind_accepted,
    expect_response,
)
from kmsgate.protocol.events import ClientEvent
from kmsgate.protocol.messages import KmsRequest, encode_request
from kmsgate.protocol.verification import sent_request

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "BindInfo", "ClientConnection"]

DEFAULT_PORT = 1688
DEFAULT_TIMEOUT = 5.0
_READ_SIZE = 4096


@dataclass(slots=True)
class BindInfo:
    """What the bind negotiated on one connection."""

    ndr32: bool
    ndr64: bool
    btfn_bits: int | None
    warnings: list[str] = field(default_factory=list)


class ClientConnection:
    """One TCP connection to a KMS host carrying any number of requests."""

    def __init__(
        self,
        host: str,
        port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: ClientSession,
        timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self._reader = reader
        self._writer = writer
        self.session = session
        self.timeout = timeout
        self.connect_latency = 0.0
        self.requests_sent = 0
        self._pending_connect_latency: float | None = None
        # Warnings already handed out; the first result also carries the bind's warnings.
        self._warnings_reported = 0
        self._answered = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        ndr64: bool = True,
        btfn: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ClientConnection:
        """Connect and complete bind (and alter_context when the host asks for it)."""
        started = time.perf_counter()
        where = str(Endpoint(host, port))
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            raise KmsTimeoutError(
                f"cannot connect to {where}: timed out after {timeout:g} s"
            ) from None
        except socket.gaierror as exc:
            raise KmsConnectionError(f"cannot resolve {host}: {exc.strerror}") from None
        except OSError as exc:
            # asyncio's message repeats the address; the errno text is what a user needs.
            reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
            error = KmsConnectionError(f"cannot connect to {where}: {reason.lower()}")
            error.errno = exc.errno
            raise error from None
        _set_nodelay(writer)
        conn = cls(host, port, reader, writer, ClientSession(ndr64=ndr64, btfn=btfn), timeout)
        try:
            await conn._bind()
        except BaseException:
            conn.abort()
            raise
        conn.connect_latency = time.perf_counter() - started
        conn._pending_connect_latency = conn.connect_latency
        return conn

    @property
    def closed_by_host(self) -> bool:
        """Whether the host has already ended the connection (some close after each answer)."""
        return self._reader.at_eof()

    @property
    def bind_info(self) -> BindInfo:
        """NDR32/NDR64 acceptance and BTFN bits as negotiated."""
        session = self.session
        return BindInfo(
            session.ndr32_accepted, session.ndr64_accepted, session.btfn_bits, session.warnings
        )

    async def _bind(self) -> None:
        self.session.send_bind()
        expect_bind_accepted(await self._round_trip("bind"))

    async def _round_trip(self, what: str) -> ClientEvent:
        """Send what the session queued (an alter_context too) until the host's answer."""
        session = self.session
        data = b""  # first: a reply that arrived before it was awaited
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    events = session.receive_data(data)
                    if outgoing := session.data_to_send():
                        self._writer.write(outgoing)
                    if events:
                        return events[0]
                    if session.awaiting_alter_context:
                        what = "alter_context"
                    data = await self._reader.read(_READ_SIZE)
                    if not data:
                        raise ConnectionClosedError(
                            f"{Endpoint(self.host, self.port)} closed the connection "
                            f"without answering the {what}"
                        )
                    if not self._answered:
                        self._answered = True
                        protocol = foreign_protocol(data)
                        if protocol is not None:
                            where = str(Endpoint(self.host, self.port))
                            raise WrongProtocolError(where, protocol)
        except TimeoutError:
            raise KmsTimeoutError(
                f"{Endpoint(self.host, self.port)} did not answer the {what} "
                f"within {self.timeout:g} s"
            ) from None
        except OSError as exc:  # reset, broken pipe, ...: the host is gone
            reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
            raise ConnectionClosedError(
                f"{Endpoint(self.host, self.port)} dropped the connection during the "
                f"{what}: {reason.lower()}"
            ) from None

    async def request(
        self, request: KmsRequest, iv: bytes | None = None, *, strict: bool = True
    ) -> ActivationResult:
        """Send one KMS request and verify the answer; strict raises on a failed fatal check."""
        message = encode_request(request, os.urandom(16) if iv is None else iv)
        return await self.send_message(request, message, strict=strict)

    async def send_message(
        self, request: KmsRequest, message: bytes, *, strict: bool = True
    ) -> ActivationResult:
        """Send an already encoded request message (of `request`) and verify the answer."""
        session = self.session
        started = time.perf_counter()
        session.send_request(message)
        call_id, syntax = session.call_id, session.syntax
        self.requests_sent += 1
        answer = expect_response(await self._round_trip(f"request (call {call_id})"))
        verified = answer.verify(sent_request(request, message))
        latency = time.perf_counter() - started
        connect_latency, self._pending_connect_latency = self._pending_connect_latency, None
        result = ActivationResult(
            host=self.host,
            port=self.port,
            request=request,
            request_message=message,
            response=verified.response,
            hwid=verified.hwid,
            checks=verified.checks,
            syntax=syntax,
            call_id=call_id,
            latency=latency,
            warnings=tuple(session.warnings[self._warnings_reported :]),
            connect_latency=connect_latency,
        )
        self._warnings_reported = len(session.warnings)
        if strict and not result.ok:
            raise ResponseVerificationError(result)
        return result

    def abort(self) -> None:
        """Drop the connection at once."""
        self._writer.transport.abort()

    async def close(self) -> None:
        """Close the connection (the host sees an orderly end)."""
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self._writer.wait_closed()

    async def __aenter__(self) -> ClientConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
