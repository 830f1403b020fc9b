"""The asyncio edge of the strict KMS client: connect, bind, send requests, verify answers.

All parsing and checking lives in the sans-IO protocol core (ClientSession, verify_response);
this module only owns sockets, timeouts, the clock and randomness.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import string
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kmsgate.catalog import Sku
from kmsgate.errors import KmsgateError
from kmsgate.protocol.client_session import (
    ClientSession,
    expect_bind_accepted,
    expect_response,
)
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.errors import (
    ActivationError,
    LocalProtocolError,
    ProtocolError,
    RpcFaultError,
    VerificationError,
)
from kmsgate.protocol.events import ClientEvent
from kmsgate.protocol.hresult import HResult, describe
from kmsgate.protocol.messages import NIL_UUID, KmsRequest, KmsResponse, encode_request
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.verification import Check, sent_request

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "ActivationResult",
    "BindInfo",
    "ClientConnection",
    "ConnectionClosedError",
    "KmsClient",
    "KmsClientError",
    "KmsConnectionError",
    "KmsTimeoutError",
    "NoHostReachableError",
    "RequestTemplate",
    "ResponseVerificationError",
    "WrongProtocolError",
    "activate_first_reachable",
    "describe_error",
    "format_endpoint",
    "random_machine_name",
]

DEFAULT_PORT = 1688
DEFAULT_TIMEOUT = 5.0
_READ_SIZE = 4096

RandomBytes = Callable[[int], bytes]
Clock = Callable[[], float]


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


def format_endpoint(host: str, port: int) -> str:
    """`host:port`, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_LABEL_FIRST = string.ascii_lowercase
_LABEL_REST = string.ascii_lowercase + string.digits
_TLDS = ("com", "net", "org", "local", "lan", "corp", "internal", "example")


def random_machine_name(random_bytes: RandomBytes = os.urandom) -> str:
    """A random DNS-like machine name such as `k7xq2.wrlm.corp` (like vlmcs's default)."""
    raw = random_bytes(24)

    def label(chunk: bytes) -> str:
        size = 3 + chunk[0] % 8
        body = chunk[1 : 1 + size]
        return _LABEL_FIRST[body[0] % 26] + "".join(_LABEL_REST[b % 36] for b in body[1:])

    return f"{label(raw[0:12])}.{label(raw[12:23])}.{_TLDS[raw[23] % len(_TLDS)]}"


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """Everything a request carries except what changes per request (CMID, name, time)."""

    application_id: uuid.UUID
    sku_id: uuid.UUID
    kms_counted_id: uuid.UUID
    required_client_count: int
    major_version: int = 6
    license_status: int = 2
    grace_time: int = 43200
    is_client_vm: int = 0
    previous_client_machine_id: uuid.UUID = NIL_UUID
    client_machine_id: uuid.UUID | None = None
    machine_name: str | None = None

    def __post_init__(self) -> None:
        if self.major_version not in (4, 5, 6):
            raise ValueError(f"protocol version must be 4, 5 or 6, not {self.major_version}")
        if self.machine_name is not None and len(self.machine_name.encode("utf-16-le")) >= 128:
            raise ValueError("machine name must fit 63 UTF-16 code units")

    @classmethod
    def from_sku(
        cls,
        sku: Sku,
        *,
        protocol: int | None = None,
        client_machine_id: uuid.UUID | None = None,
        machine_name: str | None = None,
        required_client_count: int | None = None,
        license_status: int = 2,
        grace_time: int = 43200,
    ) -> RequestTemplate:
        """Take application, SKU, KMS id, N-count and default protocol from a catalogue SKU."""
        return cls(
            application_id=sku.application_id,
            sku_id=sku.id,
            kms_counted_id=sku.kms_id,
            required_client_count=(
                sku.n_count_policy if required_client_count is None else required_client_count
            ),
            major_version=sku.default_protocol if protocol is None else protocol,
            license_status=license_status,
            grace_time=grace_time,
            client_machine_id=client_machine_id,
            machine_name=machine_name,
        )

    def build(self, random_bytes: RandomBytes, now: float) -> KmsRequest:
        """A request for this template: random CMID/name unless fixed, time `now` (Unix s)."""
        cmid = self.client_machine_id
        if cmid is None:
            cmid = uuid.UUID(bytes=random_bytes(16), version=4)
        name = self.machine_name
        if name is None:
            name = random_machine_name(random_bytes)
        return KmsRequest(
            major_version=self.major_version,
            application_id=self.application_id,
            sku_id=self.sku_id,
            kms_counted_id=self.kms_counted_id,
            client_machine_id=cmid,
            required_client_count=self.required_client_count,
            request_time=filetime_from_unix(now),
            machine_name=name,
            is_client_vm=self.is_client_vm,
            license_status=self.license_status,
            grace_time=self.grace_time,
            previous_client_machine_id=self.previous_client_machine_id,
        )


@dataclass(frozen=True, slots=True)
class ActivationResult:
    """One request and its verified answer."""

    host: str
    port: int
    request: KmsRequest
    request_message: bytes
    response: KmsResponse
    hwid: bytes | None
    checks: tuple[Check, ...]
    syntax: TransferSyntax
    call_id: int
    latency: float
    warnings: tuple[str, ...] = ()
    connect_latency: float | None = None

    @property
    def ok(self) -> bool:
        """Every fatal check passed."""
        return all(check.passed or not check.fatal for check in self.checks)


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
        where = format_endpoint(host, port)
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
                            f"{format_endpoint(self.host, self.port)} closed the connection "
                            f"without answering the {what}"
                        )
                    if not self._answered:
                        self._answered = True
                        protocol = foreign_protocol(data)
                        if protocol is not None:
                            where = format_endpoint(self.host, self.port)
                            raise WrongProtocolError(where, protocol)
        except TimeoutError:
            raise KmsTimeoutError(
                f"{format_endpoint(self.host, self.port)} did not answer the {what} "
                f"within {self.timeout:g} s"
            ) from None
        except OSError as exc:  # reset, broken pipe, ...: the host is gone
            reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
            raise ConnectionClosedError(
                f"{format_endpoint(self.host, self.port)} dropped the connection during the "
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


class KmsClient:
    """A strict KMS client for one product template; clock and randomness are injectable."""

    def __init__(
        self,
        template: RequestTemplate,
        *,
        ndr64: bool = True,
        btfn: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        random_bytes: RandomBytes = os.urandom,
        clock: Clock = time.time,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.template = template
        self.ndr64 = ndr64
        self.btfn = btfn
        self.timeout = timeout
        self.random_bytes = random_bytes
        self.clock = clock

    def new_request(self) -> tuple[KmsRequest, bytes]:
        """A fresh request from the template and its encoded message."""
        request = self.template.build(self.random_bytes, self.clock())
        try:
            return request, encode_request(request, self.random_bytes(16))
        except LocalProtocolError as exc:
            raise ValueError(str(exc)) from exc

    async def connect(self, host: str, port: int = DEFAULT_PORT) -> ClientConnection:
        """Open a bound connection to `host`."""
        return await ClientConnection.open(
            host, port, ndr64=self.ndr64, btfn=self.btfn, timeout=self.timeout
        )

    async def activate_on(self, conn: ClientConnection, *, strict: bool = True) -> ActivationResult:
        """Send one fresh request on an open connection."""
        request, message = self.new_request()
        return await conn.send_message(request, message, strict=strict)

    async def activate_again_on(
        self, conn: ClientConnection, *, strict: bool = True
    ) -> tuple[ClientConnection, ActivationResult]:
        """Send one request on a connection that may be reused; returns the one it went on.

        Some hosts (py-kms, `vlmcsd -d`) close the connection after each answer. Like the
        reference client, reconnect then, and send on the new connection instead; a host
        that drops a connection's first request is still an error.
        """
        if not (conn.requests_sent and conn.closed_by_host):
            try:
                return conn, await self.activate_on(conn, strict=strict)
            except ConnectionClosedError:
                if conn.requests_sent <= 1:
                    raise
        conn.abort()
        fresh = await self.connect(conn.host, conn.port)
        try:
            return fresh, await self.activate_on(fresh, strict=strict)
        except BaseException:
            fresh.abort()  # the caller only knows the old, closed connection
            raise

    async def activate(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        count: int = 1,
        fresh_connections: bool = False,
        strict: bool = True,
        on_result: Callable[[ActivationResult], None] | None = None,
    ) -> list[ActivationResult]:
        """Send `count` requests, on one connection or each on a new one.

        Raises on the first failure; `on_result` sees every result before that.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        results: list[ActivationResult] = []
        conn: ClientConnection | None = None
        try:
            for _ in range(count):
                if conn is None:
                    conn = await self.connect(host, port)
                conn, result = await self.activate_again_on(conn, strict=strict)
                results.append(result)
                if on_result is not None:
                    on_result(result)
                if fresh_connections:
                    await conn.close()
                    conn = None
        except BaseException:
            if conn is not None:
                conn.abort()
                conn = None
            raise
        finally:
            if conn is not None:
                await conn.close()
        return results


async def activate_first_reachable(
    client: KmsClient,
    endpoints: Sequence[tuple[str, int]],
    *,
    count: int = 1,
    fresh_connections: bool = False,
    strict: bool = True,
    on_result: Callable[[ActivationResult], None] | None = None,
) -> tuple[tuple[str, int], list[ActivationResult], list[tuple[str, KmsConnectionError]]]:
    """Try endpoints in order until one answers; only connection failures move on.

    Returns the endpoint used, its results and the failures of the endpoints tried before.
    """
    failures: list[tuple[str, KmsConnectionError]] = []
    for host, port in endpoints:
        try:
            results = await client.activate(
                host,
                port,
                count=count,
                fresh_connections=fresh_connections,
                strict=strict,
                on_result=on_result,
            )
        except KmsConnectionError as exc:
            failures.append((format_endpoint(host, port), exc))
            continue
        return (host, port), results, failures
    raise NoHostReachableError(failures)


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
