"""A KMS client's side of one connection as a sans-IO state machine (vlmcs-compatible)."""

from __future__ import annotations

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.errors import ActivationError, ProtocolError, RpcFaultError
from kmsgate.protocol.events import (
    BindAccepted,
    BindRejected,
    ClientEvent,
    ErrorReceived,
    FaultReceived,
    ResponseReceived,
)
from kmsgate.protocol.framing import PduFramer
from kmsgate.protocol.hresult import describe
from kmsgate.protocol.ndr import TransferSyntax

NDR32_CONTEXT = 0
NDR64_CONTEXT = 1


class ClientSession:
    """Builds the client's PDUs and checks every reply strictly (spec §5.2, §7.3).

    Like vlmcs, the first request of a connection travels as NDR32 (after an alter_context
    when the host preferred NDR64) and later requests use NDR64 when it was accepted.
    `send_*` queue PDUs for `data_to_send()`; `receive_data` answers with events, and raises
    ProtocolError when the host breaks the protocol. Replies arriving while nothing is awaited
    stay buffered until the next `send_request` (feed b"" then to read them).
    """

    def __init__(
        self,
        *,
        ndr64: bool = True,
        btfn: bool = True,
        conc_mpx: bool = True,
        first_call_id: int = 2,
    ) -> None:
        self.offer_ndr64 = ndr64
        self.offer_btfn = btfn
        self.conc_mpx = conc_mpx
        self.call_id = first_call_id
        self.warnings: list[str] = []
        self.ndr32_accepted = False
        self.ndr64_accepted = False
        self.btfn_bits: int | None = None
        self._framer = PduFramer()
        self._outgoing = bytearray()
        self._request_message = b""
        self._bind_flags = rpc.PFC_SINGLE | (rpc.PFC_CONC_MPX if conc_mpx else 0)
        self._contexts: tuple[rpc.ContextElement, ...] = ()
        self._awaiting: int | None = None
        self._requests_sent = 0
        self._last_context = NDR32_CONTEXT

    # -- bytes in, bytes out ---------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Take the bytes queued for the host."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes from the host; the events of every reply that was awaited.

        A stream that is not DCE-RPC raises FramingError; a reply that breaks the protocol
        raises ProtocolError.
        """
        framer = self._framer
        framer.feed(data)
        events: list[ClientEvent] = []
        while self._awaiting is not None and (raw := framer.next_pdu()) is not None:
            if self._awaiting == rpc.PType.RESPONSE:
                events.append(self._response(raw))
            else:
                event = self._bind_reply(raw)
                if event is not None:
                    events.append(event)
        return events

    @property
    def awaiting_alter_context(self) -> bool:
        """Whether the host's bind_ack asked for the alter_context now queued or sent."""
        return self._awaiting == rpc.PType.ALTER_CONTEXT_RESP

    # -- bind ----------------------------------------------------------------------------
    def send_bind(self) -> None:
        """Queue the bind PDU offering NDR32, optionally NDR64, optionally BTFN."""
        contexts = [rpc.ContextElement(NDR32_CONTEXT, rpc.KMS_INTERFACE_SYNTAX, (rpc.NDR32,))]
        if self.offer_ndr64:
            contexts.append(
                rpc.ContextElement(NDR64_CONTEXT, rpc.KMS_INTERFACE_SYNTAX, (rpc.NDR64,))
            )
        if self.offer_btfn:
            btfn = rpc.btfn_syntax(
                rpc.BTFN_SECURITY_CONTEXT_MULTIPLEXING | rpc.BTFN_KEEP_CONNECTION_ON_ORPHAN
            )
            contexts.append(rpc.ContextElement(len(contexts), rpc.KMS_INTERFACE_SYNTAX, (btfn,)))
        self._contexts = tuple(contexts)
        self._awaiting = rpc.PType.BIND_ACK
        self._outgoing += rpc.encode_pdu(
            rpc.Bind(self.call_id, self._contexts, flags=self._bind_flags)
        )

    def _bind_reply(self, raw: bytes) -> ClientEvent | None:
        """Check a bind_ack/alter_context_resp; None when it asks for an alter_context."""
        expected = self._awaiting or rpc.PType.BIND_ACK
        if raw[2] == rpc.PType.BIND_NAK:
            # Refusing the bind as a whole is an answer (from any RPC server), not a violation.
            nak = rpc.decode_pdu(raw)
            assert isinstance(nak, rpc.BindNak)
            self._awaiting = None
            return BindRejected(nak.call_id, nak.reason)
        pdu = self._expect(raw, expected)
        if not isinstance(pdu, rpc.BindAck):
            raise ProtocolError(f"expected bind_ack, got {type(pdu).__name__}")
        if len(pdu.results) != len(self._contexts):
            raise ProtocolError(
                f"host answered {len(pdu.results)} contexts, {len(self._contexts)} were proposed"
            )
        if not pdu.alter and (pdu.flags ^ self._bind_flags) & rpc.PFC_CONC_MPX:
            self.warnings.append("bind_ack CONC_MPX flag differs from the bind")
        for ctx, result in zip(self._contexts, pdu.results, strict=True):
            self._check_result(ctx, result)
        if not (self.ndr32_accepted or self.ndr64_accepted):
            raise ProtocolError("host accepted neither NDR32 nor NDR64")
        if not pdu.alter and self.ndr64_accepted and self.offer_btfn and self.btfn_bits is None:
            self.warnings.append("host accepted NDR64 without acknowledging BTFN")
        if not self.ndr32_accepted and not pdu.alter:
            self._contexts = (self._contexts[0],)
            self._awaiting = rpc.PType.ALTER_CONTEXT_RESP
            self._outgoing += rpc.encode_pdu(
                rpc.Bind(self.call_id, self._contexts, flags=self._bind_flags, alter=True)
            )
            return None
        self._awaiting = None
        return BindAccepted(self.ndr32_accepted, self.ndr64_accepted, self.btfn_bits)

    def _check_result(self, ctx: rpc.ContextElement, result: rpc.ContextResult) -> None:
        syntax = ctx.transfer_syntaxes[0]
        if syntax.is_btfn:
            if (result.result, result.reason) != (rpc.ContextResultCode.NEGOTIATE_ACK, 3):
                self.warnings.append(f"BTFN answered {result.result}/{result.reason}, not 3/3")
            if result.result == rpc.ContextResultCode.NEGOTIATE_ACK:
                self.btfn_bits = result.reason
            return
        if result.result == rpc.ContextResultCode.PROVIDER_REJECTION:
            if result.transfer_syntax != rpc.NULL_SYNTAX:
                self.warnings.append("rejected context carries a transfer syntax")
            if result.reason == rpc.RejectReason.ABSTRACT_SYNTAX_NOT_SUPPORTED:
                self.warnings.append("host says it does not support the KMS interface")
            elif result.reason != rpc.RejectReason.TRANSFER_SYNTAXES_NOT_SUPPORTED:
                self.warnings.append(f"unexpected rejection reason {result.reason}")
            return
        if result.result != rpc.ContextResultCode.ACCEPTANCE:
            raise ProtocolError(f"context {ctx.context_id}: result {result.result}")
        if result.transfer_syntax != syntax:
            raise ProtocolError(f"context {ctx.context_id}: host accepted another syntax")
        if result.reason:
            self.warnings.append(f"accepted context {ctx.context_id} has reason {result.reason}")
        if syntax == rpc.NDR32:
            self.ndr32_accepted = True
        else:
            self.ndr64_accepted = True

    # -- requests ------------------------------------------------------------------------
    def send_request(self, message: bytes) -> None:
        """Queue a request PDU carrying a KMS request message (after the bind, if any)."""
        if self._awaiting == rpc.PType.RESPONSE:
            raise ProtocolError("the previous request is still unanswered")
        if self._awaiting is not None:
            raise ProtocolError("bind is not complete")
        if self._requests_sent:
            self.call_id += 1
        use_ndr64 = self.ndr64_accepted and (self._requests_sent > 0 or not self.ndr32_accepted)
        self._last_context = NDR64_CONTEXT if use_ndr64 else NDR32_CONTEXT
        self._requests_sent += 1
        self._awaiting = rpc.PType.RESPONSE
        self._request_message = message
        stub = ndr.wrap_request(message, self.syntax)
        self._outgoing += rpc.encode_pdu(rpc.Request(self.call_id, self._last_context, 0, stub))

    @property
    def syntax(self) -> TransferSyntax:
        """Transfer syntax of the current (last built) request."""
        return TransferSyntax.NDR64 if self._last_context == NDR64_CONTEXT else TransferSyntax.NDR32

    def _response(self, raw: bytes) -> ClientEvent:
        """Check the reply to a request: its KMS response message, an HRESULT or a fault."""
        if raw[2] == rpc.PType.FAULT:
            fault = rpc.decode_pdu(raw)
            assert isinstance(fault, rpc.Fault)
            self._awaiting = None
            return FaultReceived(fault.call_id, fault.status)
        pdu = self._expect(raw, rpc.PType.RESPONSE)
        assert isinstance(pdu, rpc.Response)
        self._awaiting = None
        if pdu.cancel_count:
            raise ProtocolError(f"response cancel_count {pdu.cancel_count}")
        if pdu.context_id != self._last_context:
            raise ProtocolError(f"response on context {pdu.context_id}, not {self._last_context}")
        stub = ndr.unwrap_response(pdu.stub, self.syntax)
        self.warnings.extend(stub.warnings)
        if stub.message is None or stub.hresult:
            return ErrorReceived(pdu.call_id, self.syntax, stub.hresult)
        if pdu.alloc_hint != len(pdu.stub):
            self.warnings.append(f"alloc_hint {pdu.alloc_hint} for a {len(pdu.stub)}-byte stub")
        return ResponseReceived(pdu.call_id, self.syntax, self._request_message, stub.message)

    def _expect(self, raw: bytes, ptype: int) -> rpc.Pdu:
        header = rpc.parse_header(raw)
        if header.drep != rpc.DREP_LITTLE_ENDIAN or header.minor_version != 0:
            raise ProtocolError("reply header is not RPC 5.0 little-endian")
        if header.flags & rpc.PFC_SINGLE != rpc.PFC_SINGLE:
            raise ProtocolError("reply is not a single fragment")
        if header.ptype != ptype:
            raise ProtocolError(f"expected PDU type {ptype}, got {header.ptype}")
        if header.call_id != self.call_id:
            # Wine's RPC runtime answers with call_id 1; reference clients tolerate it.
            if header.call_id != 1:
                raise ProtocolError(f"reply call_id {header.call_id}, expected {self.call_id}")
            self.warnings.append("reply call_id 1 (Wine quirk)")
        if ptype != rpc.PType.BIND_ACK and header.flags & rpc.PFC_CONC_MPX:
            self.warnings.append(f"CONC_MPX set on PDU type {ptype}")
        return rpc.decode_pdu(raw)


def expect_response(event: ClientEvent) -> ResponseReceived:
    """The answer to a request as a ResponseReceived, or the typed error it amounts to."""
    if isinstance(event, ResponseReceived):
        return event
    if isinstance(event, FaultReceived):
        raise RpcFaultError(event.status)
    if isinstance(event, ErrorReceived):
        raise ActivationError(event.hresult, f"host returned {describe(event.hresult)}")
    raise ProtocolError(f"expected the answer to a request, got {type(event).__name__}")


def expect_bind_accepted(event: ClientEvent) -> BindAccepted:
    """The end of a bind as a BindAccepted, or a ProtocolError saying why it is not one."""
    if isinstance(event, BindAccepted):
        return event
    if isinstance(event, BindRejected):
        raise ProtocolError(f"host refused the bind (bind_nak, reason {event.reason})")
    raise ProtocolError(f"expected the answer to the bind, got {type(event).__name__}")
