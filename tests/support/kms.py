"""Raw-socket helpers for server tests (independent of kmsgate's own client edge)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid

from kmsgate.protocol.client_session import ClientSession, expect_bind_accepted, expect_response
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.events import ClientEvent
from kmsgate.protocol.framing import PduFramer
from kmsgate.protocol.messages import KmsRequest, encode_request
from kmsgate.protocol.verification import VerifiedResponse

WINDOWS_APP = uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f")
SERVER_2019_KMS = uuid.UUID("8449b1fb-f0ea-497a-99ab-66ca96e9a0f5")
SERVER_2019_DC_SKU = uuid.UUID("34e1ae55-27f8-4950-8877-7a03be5fb181")


def make_request(version: int = 6, name: str = "test-pc.example.test") -> KmsRequest:
    return KmsRequest(
        major_version=version,
        application_id=WINDOWS_APP,
        sku_id=SERVER_2019_DC_SKU,
        kms_counted_id=SERVER_2019_KMS,
        client_machine_id=uuid.uuid4(),
        required_client_count=5,
        request_time=filetime_from_unix(time.time()),
        machine_name=name,
    )


class RawClient:
    """One TCP connection driven through ClientSession."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.session = ClientSession()
        self._framer = PduFramer()

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def bind_pdu(self) -> bytes:
        """The session's bind, to be sent by hand (whole or in part)."""
        self.session.send_bind()
        return self.session.data_to_send()

    async def read_pdu(self, timeout: float = 5.0) -> bytes:
        """The next raw PDU, unchecked (for replies the session does not await)."""
        while (pdu := self._framer.next_pdu()) is None:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("server closed the connection")
            self._framer.feed(data)
        return pdu

    async def read_event(self, timeout: float = 5.0) -> ClientEvent:
        """Send what the session queued (an alter_context too) until the server's answer."""
        data = b""
        while True:
            events = self.session.receive_data(data)
            if outgoing := self.session.data_to_send():
                self.writer.write(outgoing)
            if events:
                return events[0]
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("server closed the connection")

    async def bind(self) -> None:
        self.session.send_bind()
        expect_bind_accepted(await self.read_event())

    async def activate(
        self, version: int = 6, request: KmsRequest | None = None
    ) -> VerifiedResponse:
        message = encode_request(request or make_request(version), os.urandom(16))
        self.session.send_request(message)
        return expect_response(await self.read_event()).verify()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def activate_once(port: int, version: int = 6) -> VerifiedResponse:
    client = await RawClient.connect(port)
    try:
        await client.bind()
        return await client.activate(version)
    finally:
        await client.close()


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (bounded by `timeout`)."""
    chunks = []
    async with asyncio.timeout(timeout):
        while data := await reader.read(65536):
            chunks.append(data)
    return b"".join(chunks)
