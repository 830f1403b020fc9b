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

    __slots__ = ("_buffer", "_max_pdu_size", "_read")

    def __init__(self, max_pdu_size: int | None = None) -> None:
        self._buffer = bytearray()
        # A read kept as it came while nothing else is held: the usual read is exactly one
        # PDU, which then leaves as that very object (no copy in, none out).
        self._read: bytes | None = None
        self._max_pdu_size = max_pdu_size

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete PDU (below 64 KiB: frag_length is a u16)."""
        read = self._read
        return len(self._buffer) + (0 if read is None else len(read))

    def feed(self, data: bytes) -> None:
        """Append bytes from the peer."""
        read = self._read
        if read is None and not self._buffer:
            self._read = data
            return
        if read is not None:
            self._buffer += read
            self._read = None
        self._buffer += data

    def next_pdu(self) -> bytes | None:
        """The next complete PDU, or None until more bytes arrive.

        A header that cannot be trusted (or announces a PDU above the size limit) raises
        FramingError and drops what is held: no later PDU boundary can be found after it.
        """
        read = self._read
        if read is not None:
            length = self._length(read)
            if length is None or length > len(read):
                return None
            self._read = None
            if length == len(read):
                return read
            self._buffer += read[length:]
            return read[:length]
        buffer = self._buffer
        length = self._length(buffer)
        if length is None:
            return None
        held = len(buffer)
        if held < length:
            return None
        if held == length:
            raw = bytes(buffer)
            buffer.clear()
            return raw
        raw = bytes(buffer[:length])
        del buffer[:length]
        return raw

    def _length(self, data: bytes | bytearray) -> int | None:
        """The frag_length `data` starts with (None before a whole header); FramingError,
        and nothing held any more, for a header that cannot be trusted."""
        if len(data) < rpc.HEADER_SIZE:
            return None
        length = _frag_length(data) if _frag_length is not None else None
        if length is None:  # the reference decides (and names what is wrong)
            try:
                length = rpc.checked_frag_length(data)
            except RpcDecodeError as exc:
                self.clear()
                raise FramingError(str(exc)) from None
        if self._max_pdu_size is not None and length > self._max_pdu_size:
            self.clear()
            raise FramingError(f"PDU of {length} bytes is too large")
        return length

    def clear(self) -> None:
        """Forget everything held."""
        self._buffer.clear()
        self._read = None


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
