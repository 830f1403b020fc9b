"""What the sans-IO sessions report: the host's and observer's events, and the client's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from kmsgate.protocol import rpc
from kmsgate.protocol.messages import DecodedRequest, KmsRequest, KmsResponse
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.verification import VerifiedResponse
from kmsgate.protocol.verification import verify_response as _verify_response
from kmsgate.values import value_class

# --- a conversation as the host sees it (ServerSession, ConversationObserver) -------------


@dataclass(init=False, unsafe_hash=True, slots=True)
class BindCompleted:
    """A bind or alter_context was answered."""

    call_id: Final[int]
    alter: Final[bool]
    results: Final[tuple[rpc.ContextResult, ...]]
    ndr64: Final[bool]
    btfn_bits: Final[int | None]

    def __init__(
        self,
        call_id: int,
        alter: bool,
        results: tuple[rpc.ContextResult, ...],
        ndr64: bool,
        btfn_bits: int | None,
    ) -> None:
        self.call_id = call_id
        self.alter = alter
        self.results = results
        self.ndr64 = ndr64
        self.btfn_bits = btfn_bits


@dataclass(init=False, unsafe_hash=True, slots=True)
class ActivationServed:
    """A KMS request was answered with a response message."""

    call_id: Final[int]
    syntax: Final[TransferSyntax]
    request: Final[KmsRequest]
    response: Final[KmsResponse]

    def __init__(
        self,
        call_id: int,
        syntax: TransferSyntax,
        request: KmsRequest,
        response: KmsResponse,
    ) -> None:
        self.call_id = call_id
        self.syntax = syntax
        self.request = request
        self.response = response


@value_class
class ActivationRefused:
    """A KMS request got an HRESULT error stub; `request` is None when it did not decode."""

    call_id: int
    syntax: TransferSyntax
    request: KmsRequest | None
    hresult: int
    reason: str


@value_class
class FaultSent:
    """An RPC fault PDU was queued."""

    call_id: int
    status: int
    reason: str


@value_class
class ConnectionClosed:
    """The peer broke the protocol: flush `data_to_send()` and close the connection."""

    reason: str


Event = BindCompleted | ActivationServed | ActivationRefused | FaultSent | ConnectionClosed

Direction = Literal["client", "server"]


@value_class
class ObserverNote:
    """Something in `direction`'s bytes the observer could not follow; they were relayed anyway.

    `unaccounted`: those bytes (or all that follow) may carry a call or an answer the observer
    cannot tie to a decoded request, so a gateway, which counts what it serves, must stop them.
    """

    direction: Direction
    reason: str
    call_id: int | None = None
    unaccounted: bool = False


ObserverEvent = Event | ObserverNote

# --- a conversation as the client sees it (ClientSession) ----------------------------------


@value_class
class BindAccepted:
    """The bind (and the alter_context it needed) is complete: requests may follow."""

    ndr32: bool
    ndr64: bool
    btfn_bits: int | None


@value_class
class BindRejected:
    """The host answered the bind with a bind_nak."""

    call_id: int
    reason: int


@value_class
class ResponseReceived:
    """The host answered a request with a KMS response message (not yet verified)."""

    call_id: int
    syntax: TransferSyntax
    request_message: bytes
    message: bytes

    def verify(self, sent: DecodedRequest | None = None) -> VerifiedResponse:
        """Decode the response and run every strict check against the request it answers."""
        return _verify_response(self.request_message, self.message, sent=sent)


@value_class
class ErrorReceived:
    """The host answered a request with an HRESULT other than success."""

    call_id: int
    syntax: TransferSyntax
    hresult: int


@value_class
class FaultReceived:
    """The host answered a request with an RPC fault PDU."""

    call_id: int
    status: int


ClientEvent = BindAccepted | BindRejected | ResponseReceived | ErrorReceived | FaultReceived
