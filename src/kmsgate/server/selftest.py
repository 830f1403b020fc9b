"""A KMS conversation run in memory at start-up: proves the core works and warms it up.

Running it before dropping privileges also imports everything the hot path needs (codecs,
cipher tables) while the interpreter's own files are still readable.
"""

from __future__ import annotations

import os
import uuid

from kmsgate.errors import KmsgateError
from kmsgate.protocol.client_session import (
    ClientSession,
    expect_bind_accepted,
    expect_response,
)
from kmsgate.protocol.engine import EngineConfig, KmsEngine
from kmsgate.protocol.events import ClientEvent
from kmsgate.protocol.messages import KmsRequest, encode_request
from kmsgate.protocol.session import ServerSession, SessionSettings

_EPID = "03612-00206-556-123727-03-1033-17763.0000-2972018"
_WINDOWS = uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f")


def run_self_test(now: int) -> None:
    """One connection with a v4, a v5 and a v6 request (NDR32 then NDR64); raises on failure."""
    engine = KmsEngine(EngineConfig(), lambda _request: _EPID)
    server = ServerSession(
        engine, SessionSettings(hwid=bytes(8)), random_bytes=os.urandom, assoc_group_id=1
    )
    client = ClientSession()

    def exchange() -> ClientEvent:
        server.receive_data(client.data_to_send(), now)
        events = client.receive_data(server.data_to_send())
        if client.awaiting_alter_context:
            server.receive_data(client.data_to_send(), now)
            events = client.receive_data(server.data_to_send())
        if not events:
            raise KmsgateError("self-test: the host did not answer")
        return events[0]

    client.send_bind()
    expect_bind_accepted(exchange())
    for version in (4, 5, 6):
        request = KmsRequest(
            major_version=version,
            application_id=_WINDOWS,
            sku_id=uuid.uuid4(),
            kms_counted_id=uuid.uuid4(),
            client_machine_id=uuid.uuid4(),
            required_client_count=25,
            request_time=now,
            machine_name="kmsgate-self-test",
        )
        client.send_request(encode_request(request, os.urandom(16)))
        expect_response(exchange()).verify().raise_for_failure()
