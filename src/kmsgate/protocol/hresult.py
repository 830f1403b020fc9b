"""HRESULT and NCA status codes a KMS host or client reports, with their meaning and fix.

`KMS_HRESULTS` is the one table of what each code means and what to do about it: `describe`
(log lines, client errors), `kmsgate diagnose` and the table in docs/troubleshooting.md
(`markdown_table`, kept in sync by a test) all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class HResult(IntEnum):
    """Activation results carried in the RPC response's return value."""

    S_OK = 0x00000000
    INVALID_DATA = 0x8007000D
    PRODUCT_NOT_ALLOWED = 0xC004F042
    TIME_SKEW = 0xC004F06C
    COUNT_INSUFFICIENT = 0xC004F038
    HOST_NOT_ACTIVATED = 0xC004F041
    KMS_NOT_ENABLED = 0xC004F039
    NO_KMS_CONTACTED = 0xC004F074
    TOO_MANY_CLIENTS = 0xC004D104
    RPC_SERVER_UNAVAILABLE = 0x800706BA
    DNS_NAME_DOES_NOT_EXIST = 0x8007232B
    DNS_NO_RECORDS = 0x8007251D
    BAD_NAME_SYNTAX = 0x8007007B
    ACCESS_DENIED = 0x80070005
    INVALID_PRODUCT_KEY = 0xC004F050
    VOLUME_KEY_NOT_QUALIFIED = 0xC004F035


@dataclass(frozen=True, slots=True)
class HResultInfo:
    """What one code means: a short description, the cause in plain words, and the fix."""

    code: HResult
    summary: str  # short, as log lines and client errors show it
    cause: str
    fix: str
    sent_by_host: bool  # a KMS host can answer it (else the client reports it itself)

    @property
    def hex(self) -> str:
        """`0xC004F074`."""
        return f"0x{int(self.code):08X}"


KMS_HRESULTS: tuple[HResultInfo, ...] = (
    HResultInfo(
        HResult.NO_KMS_CONTACTED,
        "no KMS host could be contacted",
        "The client gave up: every KMS host it knew (set with slmgr /skms, or found in the "
        "_vlmcs._tcp DNS records) failed, or it found none. The real reason is in the "
        "client's event 12288, usually 0x800706BA or 0x8007232B.",
        "Run `kmsgate diagnose HOST` (or `kmsgate diagnose --domain DOMAIN`) from the "
        "client's network and fix the first step it reports as an error.",
        False,
    ),
    HResultInfo(
        HResult.RPC_SERVER_UNAVAILABLE,
        "the RPC server is unavailable",
        "The TCP connection to the KMS host failed or closed before an answer: nothing "
        "listens on the port, a firewall rejects or drops it, or the host closed it "
        "(kmsgate does so for addresses outside its source policy, without an open gateway "
        "window, or at max_connections).",
        "Check that the host listens on TCP 1688 (`ss -ltnp`), that every firewall on the "
        "way lets the client through, and the host's log for the client's address.",
        False,
    ),
    HResultInfo(
        HResult.DNS_NAME_DOES_NOT_EXIST,
        "no _vlmcs._tcp SRV record was found",
        "The client has no KMS host set and its DNS domain has no _vlmcs._tcp SRV record.",
        "Set the host on the client (`slmgr /skms HOST:1688`, `ospp.vbs /sethst:HOST`) or "
        "publish the record (`kmsgate dns record`, or `dns_publish = true`).",
        False,
    ),
    HResultInfo(
        HResult.DNS_NO_RECORDS,
        "no records found for the DNS query",
        "The client's _vlmcs._tcp SRV query returned no records: the name exists but holds "
        'no SRV record, or the only record says the service is not offered (target ".").',
        "Publish a _vlmcs._tcp SRV record pointing at the KMS host, or set the host on the "
        "client with `slmgr /skms HOST:1688`.",
        False,
    ),
    HResultInfo(
        HResult.BAD_NAME_SYNTAX,
        "the KMS host name is not valid",
        "The client could not use the KMS host name it was given or found in DNS: a "
        "malformed /skms value or an SRV target that does not resolve.",
        "Check `slmgr /dlv` for the KMS machine name, then `slmgr /skms HOST:1688` with a "
        "name that resolves, or fix the SRV record's target.",
        False,
    ),
    HResultInfo(
        HResult.COUNT_INSUFFICIENT,
        "the KMS host's client count is below the product's N-count",
        "The host reported fewer clients than the product needs before it activates: 25 "
        "for Windows clients, 5 for Windows Server and Office.",
        "kmsgate: unset client_count (it then reports twice the N-count) or set it to at "
        "least 50. A genuine host: it must first have seen enough distinct machines.",
        True,
    ),
    HResultInfo(
        HResult.TIME_SKEW,
        "client and KMS host clocks differ by more than 4 hours",
        "The host refused the request's time stamp: the client's clock differs from the "
        "host's by more than the host allows (4 hours on a genuine host, max_clock_skew "
        "on kmsgate).",
        "Correct the clock and time zone of the client (`w32tm /resync`, `tzutil /g`) or of "
        "the host (`timedatectl`), or raise max_clock_skew.",
        True,
    ),
    HResultInfo(
        HResult.PRODUCT_NOT_ALLOWED,
        "the KMS host cannot activate this product",
        "The host refuses this product. kmsgate: it matches deny_product, misses a non-empty "
        "allow_product, or its KMS id is unknown while deny_unknown_products is on. A "
        "genuine host: its host key (CSVLK) does not cover the product's group.",
        "Look the product up with `kmsgate products --search NAME` and adjust the product "
        "patterns, then reload; or use a host key that covers the product.",
        True,
    ),
    HResultInfo(
        HResult.KMS_NOT_ENABLED,
        "the Key Management Service is not enabled",
        "A genuine KMS host whose KMS service is switched off answered. kmsgate never sends "
        "it, so the client reached another host, or kmsgate relays to such a host.",
        "Check the KMS machine in `slmgr /dlv` and the _vlmcs._tcp records; in relay mode "
        "fix the upstream host.",
        True,
    ),
    HResultInfo(
        HResult.HOST_NOT_ACTIVATED,
        "the KMS host is not activated",
        "A genuine KMS host whose own host key is not activated answered. kmsgate never "
        "sends it, so the client reached another host, or kmsgate relays to such a host.",
        "Activate the host key on that host (`slmgr /dlv` there), or point the client at kmsgate.",
        True,
    ),
    HResultInfo(
        HResult.INVALID_DATA,
        "the data is invalid (malformed request or unsupported version)",
        "The host could not accept the request: malformed, a protocol version it does not "
        "speak, a wrong v4 MAC or an N-count above 1000. Genuine clients do not send these.",
        "Suspect a third-party client or a middlebox rewriting traffic; `kmsgate client "
        "HOST --protocol 4` (5, 6) checks each protocol version against the host.",
        True,
    ),
    HResultInfo(
        HResult.TOO_MANY_CLIENTS,
        "the KMS host counts too many clients",
        "An emulated host (vlmcsd) that already counts its maximum of 671 clients answered.",
        "Point the client at kmsgate, which has no such limit.",
        True,
    ),
    HResultInfo(
        HResult.INVALID_PRODUCT_KEY,
        "the product key is invalid",
        "The client refused the key being installed: it is not a key for this edition.",
        "Install the edition's GVLK from `kmsgate products --search EDITION` with "
        "`slmgr /ipk KEY`.",
        False,
    ),
    HResultInfo(
        HResult.VOLUME_KEY_NOT_QUALIFIED,
        "a volume licence key needs a qualifying operating system",
        "The client (mostly Windows 7 and Server 2008 R2) refuses volume activation on a "
        "machine without a qualifying OEM licence in its firmware.",
        "Activate such machines with a MAK or retail key; KMS cannot.",
        False,
    ),
    HResultInfo(
        HResult.ACCESS_DENIED,
        "access denied",
        "The licensing command was not run with administrator rights.",
        "Run slmgr or ospp.vbs from an administrator command prompt.",
        False,
    ),
)

_BY_CODE = {int(info.code): info for info in KMS_HRESULTS}

NCA_DESCRIPTIONS = {
    0x1C010002: "nca_op_rng_error: the operation number is out of range",
    0x1C010003: "nca_unk_if: unknown interface or presentation context",
    0x1C01000B: "nca_proto_error: RPC protocol error",
    0x000006F7: "rpc_x_bad_stub_data: the stub data is malformed",
}


def explain(code: int) -> HResultInfo | None:
    """The table entry of `code`, or None for a code kmsgate does not know."""
    return _BY_CODE.get(code)


def describe(code: int) -> str:
    """Human text for an HRESULT or NCA status (hex form when unknown)."""
    if code == HResult.S_OK:
        return "0x00000000 (success)"
    info = _BY_CODE.get(code)
    if info is not None:
        return f"0x{code:08X} ({info.summary})"
    text = NCA_DESCRIPTIONS.get(code)
    return f"0x{code:08X} ({text})" if text else f"0x{code:08X}"


def markdown_table() -> str:
    """The table docs/troubleshooting.md shows, one row per code."""
    lines = [
        "| code | meaning | cause | fix | from |",
        "| --- | --- | --- | --- | --- |",
    ]
    for info in KMS_HRESULTS:
        cells = (
            f"`{info.hex}`",
            info.summary,
            info.cause,
            info.fix,
            "host" if info.sent_by_host else "client",
        )
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
