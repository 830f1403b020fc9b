"""The strict KMS client: fresh requests from a template, sent and verified, host after host.

Clock and randomness are injected; the socket work is ClientConnection's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from kmsgate.client.connection import DEFAULT_PORT, DEFAULT_TIMEOUT, ClientConnection
from kmsgate.client.errors import ConnectionClosedError, KmsConnectionError, NoHostReachableError
from kmsgate.client.exchange import ActivationResult, Clock, RandomBytes, RequestTemplate
from kmsgate.net import Endpoint
from kmsgate.protocol.errors import LocalProtocolError
from kmsgate.protocol.messages import KmsRequest, encode_request

__all__ = ["KmsClient", "activate_first_reachable"]


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
            failures.append((str(Endpoint(host, port)), exc))
            continue
        return (host, port), results, failures
    raise NoHostReachableError(failures)
