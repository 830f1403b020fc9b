"""Passive decoder of a relayed KMS conversation: both directions' bytes in, session events out.

The relay forwards bytes unchanged; this observer only watches them. It yields the same events
a ServerSession yields for a conversation it answers itself (the KMS keys are public), plus
ObserverNote for anything it could not follow. It never raises: traffic it does not
understand must still pass a plain relay. A gateway's relay, which counts each machine it
lets through, stops whatever a note marks unaccounted instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.errors import KmsMessageError, ProtocolError
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    BindCompleted,
    ConnectionClosed,
    Direction,
    FaultSent,
    ObserverEvent,
    ObserverNote,
)
from kmsgate.protocol.framing import FragmentReassembler, PduFramer
from kmsgate.protocol.messages import DecodedRequest, KmsResponse, decode_request
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.verification import Check, verify_response

# A client has at most a handful of calls in flight; more means garbage or a flood, and
# remembering them all would let a peer grow the observer without bound.
MAX_PENDING_CALLS = 64
MAX_PENDING_BINDS = 8
# The checks that tie a response to the request it answers: one failing means the answer
# belongs to another call than the one it was paired with (client_count may fail honestly).
IDENTITY_CHECKS = frozenset(
    {"version", "time_stamp", "client_machine_id", "mac", "hash", "ivs", "hmac"}
)

_T = TypeVar("_T")


def decode_response(
    decoded: DecodedRequest, response_message: bytes
) -> tuple[KmsResponse, bytes | None, tuple[Check, ...]]:
    """Decode (v4: MAC, v5/v6: decrypt with the request's salt) a host's response message.

    Returns the response, the v6 HWID (else None) and every strict-client check; a message
    too malformed to decode raises ProtocolError.
    """
    verified = verify_response(decoded.message, response_message, sent=decoded)
    return verified.response, verified.hwid, verified.checks


@dataclass(slots=True)
class _Call:
    """A request seen from the client and waiting for the host's answer."""

    call_id: int
    syntax: TransferSyntax
    decoded: DecodedRequest | None
    error: str | None


def _take(pending: dict[int, _T], call_id: int) -> tuple[_T, bool] | None:
    """The entry for `call_id`, else the oldest one, and whether the call_id matched."""
    if call_id in pending:
        return pending.pop(call_id), True
    if pending:
        return pending.pop(next(iter(pending))), False
    return None


def _guess_syntax(stub: bytes) -> TransferSyntax:
    """NDR64 repeats the array size as two u64 words, NDR32 as two u32 words."""
    if len(stub) >= 16 and stub[4:8] == bytes(4) and stub[0:8] == stub[8:16]:
        return TransferSyntax.NDR64
    return TransferSyntax.NDR32


def _syntax_of(syntax: rpc.SyntaxId) -> TransferSyntax | None:
    if syntax == rpc.NDR32:
        return TransferSyntax.NDR32
    if syntax == rpc.NDR64:
        return TransferSyntax.NDR64
    return None


class ConversationObserver:
    """Watches one relayed connection; feed each direction's bytes as they pass (sans-IO)."""

    def __init__(self) -> None:
        self._framers: dict[Direction, PduFramer] = {"client": PduFramer(), "server": PduFramer()}
        self._fragments: dict[Direction, FragmentReassembler] = {
            "client": FragmentReassembler(),
            "server": FragmentReassembler(),
        }
        # Directions whose framing was lost: their bytes pass undecoded from then on.
        self._opaque: set[Direction] = set()
        self._binds: dict[int, tuple[rpc.ContextElement, ...]] = {}
        self._contexts: dict[int, TransferSyntax] = {}
        self._calls: dict[int, _Call] = {}
        self._client_problem: str | None = None
        self._closed = False
        self.progress = 0
        self.requests_seen = 0

    # -- public API ------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes held for incomplete PDUs and calls: bounded per direction by the framing."""
        framers = sum(framer.buffered for framer in self._framers.values())
        return framers + sum(fragments.buffered for fragments in self._fragments.values())

    def receive_data(self, direction: Direction, data: bytes) -> list[ObserverEvent]:
        """Bytes `direction` (the client, or the host) sent towards the other side."""
        if self._closed:
            return []
        try:
            return self._feed(direction, data)
        except Exception as exc:  # noqa: BLE001
            # A bug here must not cut a plain relay's traffic: stop watching, keep relaying.
            self._closed = True
            return [
                ObserverNote(direction, f"observer error, no longer decoding: {exc!r}", None, True)
            ]

    def connection_closed(self, by: Direction) -> list[ObserverEvent]:
        """`by` closed the connection: what it leaves unanswered, once per conversation.

        The host closing on a broken or pending call is a ConnectionClosed; the client leaving
        with calls in flight is only noted.
        """
        if self._closed:
            return []
        self._closed = True
        if by == "client":
            if self._calls:
                note = f"client left with {len(self._calls)} unanswered call(s)"
                return [ObserverNote("client", note)]
            return []
        if self._calls:
            problem = f" after: {self._client_problem}" if self._client_problem else ""
            return [
                ConnectionClosed(
                    f"upstream closed with {len(self._calls)} unanswered call(s){problem}"
                )
            ]
        if self._client_problem is not None:
            return [ConnectionClosed(f"upstream closed after: {self._client_problem}")]
        return []

    # -- framing ---------------------------------------------------------------------------

    def _feed(self, direction: Direction, data: bytes) -> list[ObserverEvent]:
        if direction in self._opaque:
            # Opaque bytes still count as life on the connection (see `progress`).
            self.progress += 1
            return []
        framer = self._framers[direction]
        framer.feed(data)
        events: list[ObserverEvent] = []
        while True:
            try:
                raw = framer.next_pdu()
            except ProtocolError as exc:
                # Without a trustworthy frag_length no later PDU boundary can be found.
                self._opaque.add(direction)
                self._fragments[direction] = FragmentReassembler()
                self._problem(direction, str(exc))
                events.append(
                    ObserverNote(direction, f"{exc}; the rest passes undecoded", None, True)
                )
                return events
            if raw is None:
                return events
            self.progress += 1
            events.extend(self._pdu(direction, raw))

    def _problem(
        self, direction: Direction, reason: str, call_id: int | None = None
    ) -> ObserverNote:
        """A PDU that could not be followed: what it carried is unaccounted for."""
        if direction == "client":
            self._client_problem = reason
        return ObserverNote(direction, reason, call_id, True)

    def _pdu(self, direction: Direction, raw: bytes) -> list[ObserverEvent]:
        try:
            pdu = rpc.decode_pdu(raw)
        except ProtocolError as exc:
            return [self._problem(direction, str(exc))]
        if direction == "client":
            if isinstance(pdu, rpc.Bind):
                return self._bind(pdu)
            if isinstance(pdu, rpc.Request):
                return self._request(pdu)
        else:
            # The host answered after whatever the client did wrong: a later close is not
            # a reaction to it.
            self._client_problem = None
            if isinstance(pdu, rpc.BindAck):
                return self._bind_ack(pdu)
            if isinstance(pdu, rpc.BindNak):
                return [ObserverNote("server", f"upstream refused the bind (reason {pdu.reason})")]
            if isinstance(pdu, rpc.Response):
                return self._response(pdu)
            if isinstance(pdu, rpc.Fault):
                return self._fault(pdu)
        return [
            self._problem(direction, f"unexpected {type(pdu).__name__} PDU from the {direction}")
        ]

    def _reassemble(
        self, direction: Direction, call_id: int, flags: int, stub: bytes
    ) -> tuple[bytes | None, str | None]:
        """Join a multi-fragment call: (stub, None) when complete, (None, problem|None) else."""
        try:
            return self._fragments[direction].add((call_id,), flags, stub), None
        except ProtocolError as exc:
            return None, str(exc)

    # -- client PDUs -----------------------------------------------------------------------

    def _bind(self, bind: rpc.Bind) -> list[ObserverEvent]:
        self._binds.pop(bind.call_id, None)
        if len(self._binds) >= MAX_PENDING_BINDS:
            self._binds.pop(next(iter(self._binds)))
        self._binds[bind.call_id] = bind.contexts
        return []

    def _request(self, request: rpc.Request) -> list[ObserverEvent]:
        stub, problem = self._reassemble("client", request.call_id, request.flags, request.stub)
        if stub is None:
            return [] if problem is None else [self._problem("client", problem, request.call_id)]
        self.requests_seen += 1
        events: list[ObserverEvent] = []
        syntax = self._contexts.get(request.context_id)
        if syntax is None:
            # The host will most likely fault; should it answer, the stub tells its layout.
            syntax = _guess_syntax(stub)
        decoded: DecodedRequest | None = None
        error: str | None = None
        try:
            decoded = decode_request(ndr.unwrap_request(stub, syntax))
        except KmsMessageError as exc:
            error = exc.reason
        if decoded is not None and not decoded.mac_valid:
            events.append(
                ObserverNote("client", "v4 request MAC does not match its content", request.call_id)
            )
        # Either way an earlier call is forgotten: its answer could then pass unattributed.
        if request.call_id in self._calls:
            reused = f"call {request.call_id} reused before its answer"
            events.append(ObserverNote("client", reused, None, True))
            del self._calls[request.call_id]
        elif len(self._calls) >= MAX_PENDING_CALLS:
            dropped = self._calls.pop(next(iter(self._calls)))
            forgotten = "too many unanswered calls, forgetting one"
            events.append(ObserverNote("client", forgotten, dropped.call_id, True))
        self._calls[request.call_id] = _Call(request.call_id, syntax, decoded, error)
        return events

    # -- server PDUs -----------------------------------------------------------------------

    def _bind_ack(self, ack: rpc.BindAck) -> list[ObserverEvent]:
        events: list[ObserverEvent] = []
        proposed = _take(self._binds, ack.call_id)
        contexts = proposed[0] if proposed is not None else ()
        # Each of these leaves the contexts' syntaxes, and so every later stub, in doubt.
        if proposed is None:
            events.append(ObserverNote("server", "bind_ack without a bind", ack.call_id, True))
        elif not proposed[1]:
            differs = "bind_ack call_id differs from the bind's"
            events.append(ObserverNote("server", differs, None, True))
        if contexts and len(contexts) != len(ack.results):
            counts = f"{len(ack.results)} bind results for {len(contexts)} contexts"
            events.append(ObserverNote("server", counts, None, True))
        for ctx, result in zip(contexts, ack.results, strict=False):
            if ctx.abstract_syntax.uuid != rpc.KMS_INTERFACE:
                continue
            if result.result == rpc.ContextResultCode.ACCEPTANCE:
                syntax = _syntax_of(result.transfer_syntax)
            else:
                # A host preferring NDR64 rejects the NDR32 context yet still serves calls on
                # it (spec §5.1); the proposed syntax is then what the stubs use.
                syntax = _syntax_of(ctx.transfer_syntaxes[0])
            if syntax is not None:
                self._contexts[ctx.context_id] = syntax
        ndr64 = any(
            r.result == rpc.ContextResultCode.ACCEPTANCE and r.transfer_syntax == rpc.NDR64
            for r in ack.results
        )
        btfn_bits = next(
            (r.reason for r in ack.results if r.result == rpc.ContextResultCode.NEGOTIATE_ACK),
            None,
        )
        events.append(BindCompleted(ack.call_id, ack.alter, ack.results, ndr64, btfn_bits))
        return events

    def _answered(self, call_id: int, what: str) -> tuple[_Call | None, list[ObserverEvent]]:
        found = _take(self._calls, call_id)
        # A fault serves nothing; a response nobody can pair with its request may have.
        unaccounted = what == "response"
        if found is None:
            note = f"{what} to no pending call"
            return None, [ObserverNote("server", note, call_id, unaccounted)]
        call, matched = found
        if not matched and what == "response":
            # (Faults are exempt: vlmcsd writes call_id 2 into every fault it sends.)
            note = f"response call_id {call_id} differs from request {call.call_id}"
            return call, [ObserverNote("server", note, call.call_id, True)]
        return call, []

    def _fault(self, fault: rpc.Fault) -> list[ObserverEvent]:
        call, events = self._answered(fault.call_id, "fault")
        call_id = call.call_id if call is not None else fault.call_id
        events.append(FaultSent(call_id, fault.status, "sent by the upstream host"))
        return events

    def _response(self, response: rpc.Response) -> list[ObserverEvent]:
        stub, problem = self._reassemble("server", response.call_id, response.flags, response.stub)
        if stub is None:
            if problem is None:
                return []
            return [ObserverNote("server", problem, response.call_id, True)]
        call, events = self._answered(response.call_id, "response")
        if call is None:
            return events
        try:
            result = ndr.unwrap_response(stub, call.syntax)
        except ProtocolError as exc:
            events.append(ObserverNote("server", f"response stub: {exc}", call.call_id, True))
            return events
        request = call.decoded.request if call.decoded is not None else None
        if result.hresult != 0:
            reason = "refused by the upstream host"
            if call.error is not None:
                reason += f" (request: {call.error})"
            events.append(
                ActivationRefused(call.call_id, call.syntax, request, result.hresult, reason)
            )
            return events
        if result.message is None or call.decoded is None:
            why = "no response message" if result.message is None else call.error
            undecodable = f"upstream served an undecodable call: {why}"
            events.append(ObserverNote("server", undecodable, call.call_id, True))
            return events
        try:
            kms_response, _, checks = decode_response(call.decoded, result.message)
        except ProtocolError as exc:
            events.append(ObserverNote("server", f"response message: {exc}", call.call_id, True))
            return events
        events.append(
            ActivationServed(call.call_id, call.syntax, call.decoded.request, kms_response)
        )
        failed = [c.name for c in checks if not c.passed]
        if failed:
            # The served event stands; but an answer failing an identity check answers
            # another request than the one decoded, which then proves nothing.
            unaccounted = not IDENTITY_CHECKS.isdisjoint(failed)
            note = f"response fails checks: {', '.join(failed)}"
            events.append(ObserverNote("server", note, call.call_id, unaccounted))
        return events
