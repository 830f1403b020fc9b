"""Cutting a DCE-RPC byte stream into PDUs, and joining a call's fragments into one stub.

Every party of a conversation (host, client, relay observer) reads its bytes through these
two classes, so they agree on what a PDU boundary and a broken fragment sequence are.
"""

from __future__ import annotations

from typing import Final

from kmsgate.protocol import rpc, wire
from kmsgate.protocol.errors import FramingError, RpcDecodeError

DEFAULT_MAX_PDU: Final = 5840
# The C reading of a header (protocol/wire.py), or None.
_frag_length: Final = wire.frag_length
# A KMS request is a few hundred bytes; fragments beyond this are an attack, not a client.
MAX_REASSEMBLED_STUB: Final = 8192


class PduFramer:
    """Splits one direction's byte stream into whole PDUs by their frag_length."""

    __slots__ = ("_buffer", "_max_pdu_size")

    def __init__(self, max_pdu_size: int | None = None) -> None:
        self._buffer = bytearray()
        self._max_pdu_size = max_pdu_size

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete PDU (below 64 KiB: frag_length is a u16)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Append bytes from the peer."""
        self._buffer += data

    def next_pdu(self) -> bytes | None:
        """The next complete PDU, or None until more bytes arrive.

        A header that cannot be trusted (or announces a PDU above the size limit) raises
        FramingError and drops the buffer: no later PDU boundary can be found after it.
        """
        buffer = self._buffer
        if len(buffer) < rpc.HEADER_SIZE:
            return None
        length = _frag_length(buffer) if _frag_length is not None else None
        if length is None:  # the reference decides (and names what is wrong)
            try:
                length = rpc.checked_frag_length(buffer)
            except RpcDecodeError as exc:
                buffer.clear()
                raise FramingError(str(exc)) from None
        if self._max_pdu_size is not None and length > self._max_pdu_size:
            buffer.clear()
            raise FramingError(f"PDU of {length} bytes is too large")
        held = len(buffer)
        if held < length:
            return None
        if held == length:
            # The usual read: exactly one PDU, taken whole (no slice, no shift of the rest).
            raw = bytes(buffer)
            buffer.clear()
            return raw
        raw = bytes(buffer[:length])
        del buffer[:length]
        return raw

    def clear(self) -> None:
        """Forget everything buffered."""
        self._buffer.clear()


class FragmentReassembler:
    """Joins the fragments of one call at a time into its whole stub (request or response).

    `call` identifies the call a fragment belongs to (its call_id, plus whatever else the
    caller requires fragments to agree on); a sequence that breaks raises RpcDecodeError and
    forgets the pending fragments.
    """

    __slots__ = ("_call", "_stub")

    def __init__(self) -> None:
        self._stub: bytearray | None = None
        self._call: tuple[int, ...] = ()

    @property
    def buffered(self) -> int:
        """Stub bytes held for a call whose last fragment has not arrived."""
        return 0 if self._stub is None else len(self._stub)

    @property
    def pending(self) -> bool:
        """A call's first fragment is in and its last is not."""
        return self._stub is not None

    def add(self, call: tuple[int, ...], flags: int, stub: bytes) -> bytes | None:
        """One fragment's stub; the whole stub once its last fragment is in, else None."""
        first = flags & rpc.PFC_FIRST_FRAG
        last = flags & rpc.PFC_LAST_FRAG
        if first and last:
            # A single-fragment call ends whatever sequence was pending.
            self._stub = None
            return stub
        if first:
            self._stub = bytearray()
            self._call = call
        pending = self._stub
        if pending is None:
            raise RpcDecodeError(
                f"continuation fragment of call {call[0]} without a first fragment"
            )
        if call != self._call:
            self._stub = None
            raise RpcDecodeError(
                f"fragments of one call disagree on call_id, context or opnum "
                f"(call {call[0]} continues call {self._call[0]})"
            )
        pending += stub
        if len(pending) > MAX_REASSEMBLED_STUB:
            self._stub = None
            raise RpcDecodeError(
                f"fragmented call {call[0]} too large (over {MAX_REASSEMBLED_STUB} bytes)"
            )
        if not last:
            return None
        self._stub = None
        return bytes(pending)
