"""Bind negotiation: how a KMS host answers the presentation contexts a client proposes."""

from __future__ import annotations

from dataclasses import dataclass

from kmsgate.protocol.pdus import (
    BTFN_KEEP_CONNECTION_ON_ORPHAN,
    BTFN_SECURITY_CONTEXT_MULTIPLEXING,
    KMS_INTERFACE,
    NDR32,
    NDR64,
    ContextElement,
    ContextResult,
    ContextResultCode,
    RejectReason,
)


@dataclass(frozen=True, slots=True)
class Negotiation:
    """Outcome of one bind/alter_context: per-context results and the contexts learned."""

    results: tuple[ContextResult, ...]
    ndr32_context: int | None = None
    ndr64_context: int | None = None
    btfn_bits: int | None = None


def negotiate(contexts: tuple[ContextElement, ...], *, ndr64: bool, btfn: bool) -> Negotiation:
    """Answer proposed contexts the way a KMS host does (spec §5.1).

    NDR64 is preferred: when a PDU offers both, NDR32 is rejected in the bind_ack, yet its
    context id stays usable, which is what genuine clients rely on for their first request.
    """
    ndr32_context = None
    ndr64_context = None
    for ctx in contexts:
        syntax = ctx.transfer_syntaxes[0]
        if ctx.abstract_syntax.uuid != KMS_INTERFACE:
            continue
        if syntax == NDR32:
            ndr32_context = ctx.context_id
        elif ndr64 and syntax == NDR64:
            ndr64_context = ctx.context_id
    results = []
    btfn_bits = None
    for ctx in contexts:
        syntax = ctx.transfer_syntaxes[0]
        is_kms = ctx.abstract_syntax.uuid == KMS_INTERFACE
        reason = (
            RejectReason.TRANSFER_SYNTAXES_NOT_SUPPORTED
            if is_kms
            else RejectReason.ABSTRACT_SYNTAX_NOT_SUPPORTED
        )
        if is_kms and syntax == NDR32 and ndr64_context is None:
            results.append(ContextResult(ContextResultCode.ACCEPTANCE, 0, NDR32))
        elif is_kms and syntax == NDR64 and ndr64_context is not None:
            results.append(ContextResult(ContextResultCode.ACCEPTANCE, 0, NDR64))
        elif syntax.is_btfn and btfn:
            btfn_bits = syntax.btfn_bits & (
                BTFN_SECURITY_CONTEXT_MULTIPLEXING | BTFN_KEEP_CONNECTION_ON_ORPHAN
            )
            results.append(ContextResult(ContextResultCode.NEGOTIATE_ACK, btfn_bits))
        else:
            if syntax.is_btfn:
                reason = RejectReason.TRANSFER_SYNTAXES_NOT_SUPPORTED
            results.append(ContextResult(ContextResultCode.PROVIDER_REJECTION, reason))
    return Negotiation(tuple(results), ndr32_context, ndr64_context, btfn_bits)
