"""HRESULT and NCA status codes a KMS host or client reports, with their meaning."""

from __future__ import annotations

from enum import IntEnum


class HResult(IntEnum):
    """Activation results carried in the RPC response's return value."""

    S_OK = 0x00000000
    INVALID_DATA = 0x8007000D
    PRODUCT_NOT_ALLOWED = 0xC004F042
    TIME_SKEW = 0xC004F06C
    COUNT_INSUFFICIENT = 0xC004F038
    HOST_NOT_ACTIVATED = 0xC004F041
    NO_KMS_CONTACTED = 0xC004F074
    TOO_MANY_CLIENTS = 0xC004D104
    RPC_SERVER_UNAVAILABLE = 0x800706BA
    DNS_NAME_DOES_NOT_EXIST = 0x8007232B


_DESCRIPTIONS = {
    HResult.S_OK: "success",
    HResult.INVALID_DATA: "the data is invalid (malformed request or unsupported version)",
    HResult.PRODUCT_NOT_ALLOWED: "the KMS host cannot activate this product",
    HResult.TIME_SKEW: "client and KMS host clocks differ by more than 4 hours",
    HResult.COUNT_INSUFFICIENT: "the KMS host's client count is below the product's N-count",
    HResult.HOST_NOT_ACTIVATED: "the KMS host is not activated",
    HResult.NO_KMS_CONTACTED: "no KMS host could be contacted",
    HResult.TOO_MANY_CLIENTS: "the KMS host counts too many clients",
    HResult.RPC_SERVER_UNAVAILABLE: "the RPC server is unavailable",
    HResult.DNS_NAME_DOES_NOT_EXIST: "no _vlmcs._tcp SRV record was found",
}

NCA_DESCRIPTIONS = {
    0x1C010002: "nca_op_rng_error: the operation number is out of range",
    0x1C010003: "nca_unk_if: unknown interface or presentation context",
    0x1C01000B: "nca_proto_error: RPC protocol error",
    0x000006F7: "rpc_x_bad_stub_data: the stub data is malformed",
}


def describe(code: int) -> str:
    """Human text for an HRESULT or NCA status (hex form when unknown)."""
    try:
        return f"0x{code:08X} ({_DESCRIPTIONS[HResult(code)]})"
    except ValueError:
        text = NCA_DESCRIPTIONS.get(code)
        return f"0x{code:08X} ({text})" if text else f"0x{code:08X}"
