"""Raw-socket helpers for server tests (independent of kmsgate's own client edge)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid

from kmsgate.protocol.client_session import ClientSession
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.messages import KmsRequest, VerifiedResponse, encode_request, verify_response

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

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def read_pdu(self, timeout: float = 5.0) -> bytes:
        while (pdu := self.session.next_pdu()) is None:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("server closed the connection")
            self.session.receive_data(data)
        return pdu

    async def bind(self) -> None:
        self.writer.write(self.session.bind())
        alter = self.session.handle_bind_reply(await self.read_pdu())
        if alter:
            self.writer.write(alter)
            self.session.handle_bind_reply(await self.read_pdu())

    async def activate(
        self, version: int = 6, request: KmsRequest | None = None
    ) -> VerifiedResponse:
        message = encode_request(request or make_request(version), os.urandom(16))
        self.writer.write(self.session.request(message))
        answer = self.session.handle_response(await self.read_pdu())
        return verify_response(message, answer)

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
