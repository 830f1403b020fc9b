"""Answers leave together at the end of a loop pass (those opening a conversation, once a pass
brings no more), in order, each to its own client."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmsgate.config.settings import ServeSettings
from kmsgate.protocol.client_session import expect_response
from kmsgate.protocol.messages import encode_request
from kmsgate.server.host import KmsHost
from kmsgate.server.outbox import BATCH, AnswerOutbox
from tests.support.kms import RawClient, make_request, read_until_closed
from tests.support.loops import Passes


class Sender:
    """A connection stand-in that notes when it was told to send."""

    def __init__(self, name: str, sent: list[str], fail: bool = False) -> None:
        self.name, self.sent, self.fail = name, sent, fail

    def send_queued(self) -> None:
        if self.fail:
            raise RuntimeError(f"{self.name} broke")
        self.sent.append(self.name)


async def test_answers_queued_in_a_pass_leave_together_at_its_end() -> None:
    outbox = AnswerOutbox(asyncio.get_running_loop())
    sent: list[str] = []
    seen_during_pass: list[list[str]] = []

    def read(name: str) -> None:
        outbox.add(Sender(name, sent))
        seen_during_pass.append(list(sent))

    loop = asyncio.get_running_loop()
    for name in "abc":
        loop.call_soon(read, name)
    await asyncio.sleep(0)  # the three "reads" run
    await asyncio.sleep(0)  # the flush they scheduled runs
    assert seen_during_pass == [[], [], []]
    assert sent == ["a", "b", "c"]
    assert len(outbox) == 0


async def test_a_full_batch_leaves_at_once_and_the_rest_at_the_end_of_the_pass() -> None:
    outbox = AnswerOutbox(asyncio.get_running_loop(), batch=3)
    sent: list[str] = []
    for name in "abcd":
        outbox.add(Sender(name, sent))
    assert sent == ["a", "b", "c"]  # the third made a full batch
    assert len(outbox) == 1
    await asyncio.sleep(0)
    assert sent == ["a", "b", "c", "d"]
    outbox.flush()  # nothing is sent twice
    assert sent == ["a", "b", "c", "d"]


async def test_opening_answers_wait_one_pass_more_and_leave_with_the_next_passes() -> None:
    """A bind's or first activation's answer leaves at the end of the next pass, with what
    that pass queued; a later answer of a conversation at the end of its own pass."""
    loop = asyncio.get_running_loop()
    outbox = AnswerOutbox(loop)
    sent: list[str] = []
    outbox.add(Sender("new-1", sent), opening=True)
    await asyncio.sleep(0)  # the end of this pass: nothing leaves yet
    assert sent == []
    outbox.add(Sender("new-2", sent), opening=True)  # read in the next pass
    await asyncio.sleep(0)
    assert sent == ["new-1", "new-2"]
    assert len(outbox) == 0
    outbox.add(Sender("kept", sent))
    await asyncio.sleep(0)
    assert sent == ["new-1", "new-2", "kept"]


async def test_opening_answers_wait_while_each_pass_brings_more() -> None:
    """Their clients are still sending: the answers of the passes that follow share the
    wake-up; the first pass that brings none sends them all."""
    outbox = AnswerOutbox(asyncio.get_running_loop())
    sent: list[str] = []
    outbox.add(Sender("new-1", sent), opening=True)
    outbox.add(Sender("new-2", sent), opening=True)  # read later in the same pass
    await asyncio.sleep(0)
    outbox.add(Sender("new-3", sent), opening=True)  # this pass brings one more
    await asyncio.sleep(0)
    assert sent == []
    await asyncio.sleep(0)  # a pass that brought none: the flush is scheduled...
    assert sent == []
    await asyncio.sleep(0)  # ...and runs after that pass's reads
    assert sent == ["new-1", "new-2", "new-3"]


@given(
    passes=st.lists(st.lists(st.booleans(), max_size=2 * BATCH), min_size=1, max_size=40),
    batch=st.integers(1, BATCH),
)
def test_every_answer_leaves_once_in_order_and_within_a_batch_of_passes(
    passes: list[list[bool]], batch: int
) -> None:
    """Whatever the mix of opening and later answers over the passes, each leaves exactly
    once, in the order queued, and none waits more than `batch` passes."""
    loop = Passes()
    outbox = AnswerOutbox(loop, batch=batch)  # type: ignore[arg-type]
    sent: list[str] = []
    queued_in: dict[str, int] = {}
    sent_in: dict[str, int] = {}

    def note_sent(number: int) -> None:
        for name in sent[len(sent_in) :]:
            sent_in[name] = number

    for number, openings in enumerate([*passes, *[[]] * (batch + 2)]):
        for opening in openings:
            name = f"{number}-{len(queued_in)}"
            queued_in[name] = number
            outbox.add(Sender(name, sent), opening=opening)
            note_sent(number)  # a full batch leaves at once
        loop.run_pass()
        note_sent(number)
    assert sent == list(queued_in)
    assert all(sent_in[name] - queued_in[name] <= batch for name in sent)
    assert len(outbox) == 0


async def test_an_answer_due_this_pass_takes_the_opening_ones_along() -> None:
    outbox = AnswerOutbox(asyncio.get_running_loop())
    sent: list[str] = []
    outbox.add(Sender("new", sent), opening=True)
    outbox.add(Sender("kept", sent))
    await asyncio.sleep(0)
    assert sent == ["new", "kept"]  # in the order queued, nothing held back
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sent == ["new", "kept"]  # the opening answer's later flush sends nothing twice


async def test_opening_answers_still_leave_at_once_in_a_full_batch() -> None:
    outbox = AnswerOutbox(asyncio.get_running_loop(), batch=3)
    sent: list[str] = []
    for name in "abc":
        outbox.add(Sender(name, sent), opening=True)
    assert sent == ["a", "b", "c"]


async def test_one_failing_connection_does_not_hold_back_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = AnswerOutbox(asyncio.get_running_loop())
    sent: list[str] = []
    outbox.add(Sender("a", sent))
    outbox.add(Sender("bad", sent, fail=True))
    outbox.add(Sender("c", sent))
    with caplog.at_level(logging.ERROR, logger="kmsgate.server"):
        await asyncio.sleep(0)
    assert sent == ["a", "c"]
    assert "sending queued answers failed" in caplog.text


@pytest.mark.integration
async def test_clients_answered_in_one_pass_each_get_their_own_answer() -> None:
    settings = ServeSettings(listen=["127.0.0.1:0"], idle_timeout=5.0)  # type: ignore[arg-type]
    async with KmsHost(settings) as host:
        assert host.outbox is not None
        clients = [await RawClient.connect(host.port) for _ in range(3 * BATCH + 1)]
        for client in clients:
            await client.bind()
        requests = [make_request(6, name=f"pc-{i}.example.test") for i in range(len(clients))]
        for client, request in zip(clients, requests, strict=True):
            client.session.send_request(encode_request(request, os.urandom(16)))
            client.writer.write(client.session.data_to_send())
        # Written before any answer is read: the host finds them ready in the same passes.
        await asyncio.sleep(0.05)
        for client, request in zip(clients, requests, strict=True):
            verified = expect_response(await client.read_event()).verify()
            assert verified.response.client_machine_id == request.client_machine_id
            assert verified.response.response_time == request.request_time
        assert len(host.outbox) == 0
        assert host.stats.activations == len(clients)
        for client in clients:
            await client.close()


@pytest.mark.integration
async def test_a_client_that_half_closes_after_its_first_request_gets_its_answer() -> None:
    """The first answer waits a pass in the outbox; the end of input must not drop it."""
    settings = ServeSettings(listen=["127.0.0.1:0"], idle_timeout=5.0)  # type: ignore[arg-type]
    async with KmsHost(settings) as host:
        for round_ in range(20):  # the EOF read in the request's pass or a later one
            client = await RawClient.connect(host.port)
            await client.bind()
            request = make_request(6, name=f"pc-{round_}.example.test")
            client.session.send_request(encode_request(request, os.urandom(16)))
            client.writer.write(client.session.data_to_send())
            client.writer.write_eof()
            verified = expect_response(await client.read_event()).verify()
            assert verified.response.client_machine_id == request.client_machine_id
            assert await read_until_closed(client.reader) == b""
        assert host.stats.activations == 20
