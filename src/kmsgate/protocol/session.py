"""One KMS host connection as a sans-IO state machine: bytes in, bytes and events out."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kmsgate.protocol import ndr, rpc, wire
from kmsgate.protocol.engine import KmsEngine
from kmsgate.protocol.errors import KmsMessageError, LocalProtocolError, RpcDecodeError
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    BindCompleted,
    ConnectionClosed,
    Event,
    FaultSent,
)
from kmsgate.protocol.framing import DEFAULT_MAX_PDU, FragmentReassembler, PduFramer
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import (
    DecodedRequest,
    KmsRequest,
    RandomBytes,
    decode_request,
    encode_response,
)
from kmsgate.protocol.ndr import TransferSyntax


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Per-listener RPC behaviour."""

    port: int = 1688
    ndr64: bool = True
    btfn: bool = True
    hwid: bytes = bytes(8)
    max_pdu_size: int = DEFAULT_MAX_PDU


@dataclass(frozen=True, slots=True)
class PolicyRefusal:
    """A request policy's verdict against one request: the HRESULT to answer, and why."""

    hresult: int
    reason: str


RequestPolicy = Callable[[KmsRequest, int], PolicyRefusal | None]
"""Asked about every decoded request before the engine, with the host clock as FILETIME.

It sees one connection's requests in order and may keep state (e.g. the first client machine
id); it must not do I/O. A PolicyRefusal is answered as an error stub and reported as an
ActivationRefused carrying the decoded request.
"""


# A context id no PDU carries (they are u16): the session's "not bound".
UNBOUND: Final = -1
# The C layout of a plain request and its answer, or None (protocol/wire.py).
_request_message: Final = wire.request_message
_response_pdu: Final = wire.response_pdu
# The PDU types a host negotiates on, as plain ints (an IntEnum compares at Python speed).
_BIND: Final = int(rpc.PType.BIND)
_ALTER_CONTEXT: Final = int(rpc.PType.ALTER_CONTEXT)

# assoc_group_id's offset in a bind_ack or alter_context_resp PDU (header, then 2 u16s).
_ASSOC_GROUP_AT: Final = rpc.HEADER_SIZE + 4


@functools.lru_cache(maxsize=512)
def _answer_bind(
    raw: bytes, ndr64: bool, btfn: bool, port: int
) -> tuple[rpc.Bind, rpc.Negotiation, bytes]:
    """Decode and negotiate a bind, and encode its acceptance with assoc_group_id 0 (each
    session sets its own); cached because a client fleet sends identical binds."""
    bind = rpc.decode_pdu(raw)
    if not isinstance(bind, rpc.Bind):
        raise RpcDecodeError("not a bind PDU")
    outcome = rpc.negotiate(bind.contexts, ndr64=ndr64, btfn=btfn)
    if not bind.contexts:
        return bind, outcome, b""  # refused: nothing to accept
    ack = rpc.encode_pdu(
        rpc.BindAck(
            call_id=bind.call_id,
            results=outcome.results,
            max_xmit_frag=bind.max_xmit_frag,
            max_recv_frag=bind.max_recv_frag,
            assoc_group_id=0,
            secondary_address="" if bind.alter else str(port),
            # Clients compare CONC_MPX with what they sent; alter_context_resp never sets it.
            flags=rpc.PFC_SINGLE | (0 if bind.alter else bind.flags & rpc.PFC_CONC_MPX),
            alter=bind.alter,
        )
    )
    return bind, outcome, ack


class ServerSession:
    """A KMS host's side of one TCP connection (compare h11.Connection)."""

    def __init__(
        self,
        engine: KmsEngine,
        settings: SessionSettings,
        *,
        random_bytes: RandomBytes,
        assoc_group_id: int,
        request_policy: RequestPolicy | None = None,
    ) -> None:
        self._engine = engine
        self._request_policy = request_policy
        self._settings = settings
        self._random_bytes = random_bytes
        self._assoc_group_id = assoc_group_id or 1
        self._framer = PduFramer(settings.max_pdu_size)
        self._fragments = FragmentReassembler()
        self._outgoing = bytearray()
        # The one PDU queued while nothing else is (a read's usual answer), kept as built: it
        # leaves as that object, without a copy into `_outgoing` and another out of it.
        self._answer: bytes | None = None
        self._ndr32_context = UNBOUND
        self._ndr64_context = UNBOUND
        self.closed = False
        self.requests_served = 0
        self.requests_answered = 0
        self.pdus_handled = 0

    def data_to_send(self) -> bytes:
        """Take the bytes queued for the peer."""
        answer = self._answer
        if answer is not None:
            self._answer = None
            return answer
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def _queue(self, pdu: bytes) -> None:
        if self._answer is None and not self._outgoing:
            self._answer = pdu
        else:
            self._pending_bytes().extend(pdu)

    def _pending_bytes(self) -> bytearray:
        """The queue as one buffer, to add to or patch in place."""
        answer = self._answer
        if answer is not None:
            self._outgoing += answer
            self._answer = None
        return self._outgoing

    def receive_data(self, data: bytes, now: int) -> list[Event]:
        """Feed bytes from the peer; `now` is the host clock as FILETIME."""
        if self.closed:
            return []
        framer = self._framer
        framer.feed(data)
        events: list[Event] = []
        while not self.closed:
            try:
                raw = framer.next_pdu()
            except RpcDecodeError as exc:
                events.append(self._close(str(exc)))
                break
            if raw is None:
                break
            events.extend(self._handle(raw, now))
        return events

    def _close(self, reason: str) -> ConnectionClosed:
        self.closed = True
        self._framer.clear()
        return ConnectionClosed(reason)

    def _handle(self, raw: bytes, now: int) -> list[Event]:
        self.pdus_handled += 1
        if _request_message is not None and not self._fragments.pending:
            plain = _request_message(raw, self._ndr32_context, self._ndr64_context)
            if plain is not None:
                call_id, context_id, ndr64, message = plain
                syntax = TransferSyntax.NDR64 if ndr64 else TransferSyntax.NDR32
                return self._serve(call_id, context_id, syntax, message, now)
        try:
            if raw[2] in (_BIND, _ALTER_CONTEXT):
                settings = self._settings
                answer = _answer_bind(raw, settings.ndr64, settings.btfn, settings.port)
                return [self._bind(*answer)]
            pdu = rpc.decode_request_pdu(raw)
        except RpcDecodeError as exc:
            return [self._close(str(exc))]
        if isinstance(pdu, rpc.Request):
            return self._request(pdu, now)
        return [self._close(f"unexpected {type(pdu).__name__} PDU from a client")]

    def _send(self, pdu: rpc.Pdu) -> None:
        self._queue(rpc.encode_pdu(pdu))

    def _bind(self, bind: rpc.Bind, outcome: rpc.Negotiation, ack: bytes) -> Event:
        if not bind.contexts:
            self._send(rpc.BindNak(bind.call_id, rpc.BindNakReason.NOT_SPECIFIED))
            return self._close("bind without presentation contexts")
        if outcome.ndr32_context is not None:
            self._ndr32_context = outcome.ndr32_context
        if outcome.ndr64_context is not None:
            self._ndr64_context = outcome.ndr64_context
        out = self._pending_bytes()
        at = len(out) + _ASSOC_GROUP_AT
        out += ack
        out[at : at + 4] = self._assoc_group_id.to_bytes(4, "little")
        return BindCompleted(
            bind.call_id,
            bind.alter,
            outcome.results,
            outcome.ndr64_context is not None,
            outcome.btfn_bits,
        )

    def _fault(self, request: rpc.Request, status: int, reason: str) -> FaultSent:
        self._send(rpc.Fault(request.call_id, status, context_id=request.context_id))
        return FaultSent(request.call_id, status, reason)

    def _request(self, request: rpc.Request, now: int) -> list[Event]:
        try:
            stub = self._fragments.add(
                (request.call_id, request.context_id, request.opnum), request.flags, request.stub
            )
        except RpcDecodeError as exc:
            return [self._close(str(exc))]
        if stub is None:
            return []
        call_id, context_id = request.call_id, request.context_id
        if context_id == self._ndr32_context:
            syntax = TransferSyntax.NDR32
        elif context_id == self._ndr64_context:
            syntax = TransferSyntax.NDR64
        else:
            return [self._fault(request, rpc.NCA_UNK_IF, f"context {context_id} unbound")]
        if request.opnum != 0:
            return [self._fault(request, rpc.NCA_OP_RNG_ERROR, f"opnum {request.opnum}")]
        try:
            message = ndr.unwrap_request(stub, syntax)
        except KmsMessageError as exc:
            return [self._refuse(call_id, context_id, syntax, None, exc.hresult, exc.reason)]
        return self._serve(call_id, context_id, syntax, message, now)

    def _serve(
        self, call_id: int, context_id: int, syntax: TransferSyntax, message: bytes, now: int
    ) -> list[Event]:
        """Answer one whole KMS request message that came on a bound context."""
        decoded: DecodedRequest | None = None
        try:
            decoded = decode_request(message)
            if self._request_policy is not None:
                # Before the engine: a refused request must not count as a client either.
                refusal = self._request_policy(decoded.request, now)
                if refusal is not None:
                    return [
                        self._refuse(
                            call_id, context_id, syntax, decoded, refusal.hresult, refusal.reason
                        )
                    ]
            response = self._engine.respond(decoded, now)
            reply = encode_response(
                decoded, response, random_bytes=self._random_bytes, hwid=self._settings.hwid
            )
        except KmsMessageError as exc:
            return [self._refuse(call_id, context_id, syntax, decoded, exc.hresult, exc.reason)]
        except LocalProtocolError as exc:
            # The host could not build an answer (e.g. a misconfigured ePID): the client still
            # gets a well-formed refusal, as a genuine host would send.
            return [
                self._refuse(call_id, context_id, syntax, decoded, HResult.INVALID_DATA, str(exc))
            ]
        pdu = None
        if _response_pdu is not None:
            pdu = _response_pdu(call_id, context_id, syntax is TransferSyntax.NDR64, reply)
        if pdu is None:
            reply_stub = ndr.wrap_response(reply, syntax)
            pdu = rpc.encode_response_pdu(call_id, context_id, reply_stub)
        self._queue(pdu)
        self.requests_served += 1
        self.requests_answered += 1
        return [ActivationServed(call_id, syntax, decoded.request, response)]

    def _refuse(
        self,
        call_id: int,
        context_id: int,
        syntax: TransferSyntax,
        decoded: DecodedRequest | None,
        hresult: int,
        reason: str,
    ) -> ActivationRefused:
        error_stub = ndr.wrap_error(hresult, syntax)
        self._queue(rpc.encode_response_pdu(call_id, context_id, error_stub))
        self.requests_answered += 1
        parsed = decoded.request if decoded else None
        return ActivationRefused(call_id, syntax, parsed, hresult, reason)
