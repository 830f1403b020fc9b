"""The identity, policy and count steps: what a verified KMS answer says about the host."""

from __future__ import annotations

from typing import Any

from kmsgate.catalog import Catalog, Sku
from kmsgate.client.diagnose_report import Finding, error_finding
from kmsgate.client.exchange import ActivationResult
from kmsgate.protocol.epid import parse_epid
from kmsgate.protocol.hresult import HResult, explain

__all__ = ["count_finding", "identity_finding", "policy_finding"]


def identity_finding(result: ActivationResult, catalog: Catalog, sku: Sku) -> Finding:
    """The ePID (and v6 HWID) decoded: host build, CSVLK group, whether it covers the product."""
    epid_text = result.response.epid
    details: dict[str, Any] = {"epid": epid_text}
    if result.hwid is not None:
        details["hwid"] = result.hwid.hex().upper()
    try:
        epid = parse_epid(epid_text)
    except ValueError as exc:
        return Finding(
            "identity",
            "warning",
            f"ePID {epid_text!r} is not well formed",
            f"{exc}. Windows does not check the ePID, but a genuine host always sends a "
            "well-formed one, so this host is an emulator with unusual settings.",
            details=details,
        )
    build = catalog.host_build(epid.build)
    keys = [c for c in catalog.csvlks if c.group_id == epid.group_id and c.has_key_id(epid.key_id)]
    details.update(
        platform_id=epid.platform_id,
        group_id=epid.group_id,
        key_id=epid.key_id,
        lcid=epid.lcid,
        host_build=epid.build,
        host_os=build.name if build else None,
        activation_date=epid.activation_date.isoformat(),
        csvlk=[c.name for c in keys],
    )
    os_text = build.name if build else f"an unknown build {epid.build}"
    key_text = ", ".join(c.name for c in keys) if keys else f"an unknown group {epid.group_id}"
    title = f"host key {key_text} on {os_text}"
    explanation = (
        f"The ePID names the host's key group {epid.group_id} (key id {epid.key_id}), its "
        f"OS build {epid.build} and an activation date of {epid.activation_date}."
    )
    covers = any(sku.kms_id in c.activates_kms_ids for c in keys)
    if keys and not covers:
        return Finding(
            "identity",
            "warning",
            title,
            explanation + f" A genuine host with that key could not activate {sku.name}; "
            "Windows does not check, but the ePID does not match the product.",
            "kmsgate picks a fitting ePID unless one is fixed with --epid; a fixed one "
            "should come from a key that covers every product served.",
            details=details,
        )
    if not keys or build is None:
        return Finding(
            "identity",
            "warning",
            title,
            explanation + " The key group or build is not in kmsgate's catalogue; Windows "
            "does not check it.",
            details=details,
        )
    return Finding("identity", "ok", title, explanation, details=details)


def count_finding(result: ActivationResult) -> Finding:
    """The client count the host reported against the count the product needs."""
    count = result.response.current_client_count
    needed = result.request.required_client_count
    details = {"current_client_count": count, "required": needed}
    if count < needed:
        info = explain(HResult.COUNT_INSUFFICIENT)
        assert info is not None
        return error_finding(
            "count",
            f"the host counts {count} client(s); this product needs {needed}",
            f"Windows activates only when the host has seen at least {needed} machines "
            f"for this product group, and reports 0xC004F038 otherwise. {info.cause}",
            info.fix,
            hresult=HResult.COUNT_INSUFFICIENT,
            details=details,
        )
    return Finding(
        "count",
        "ok",
        f"the host counts {count} client(s); this product needs {needed}",
        f"Windows needs a count of at least {needed} before it activates (0xC004F038 otherwise).",
        details=details,
    )


def policy_finding(sku: Sku, catalog: Catalog) -> Finding:
    """The host served `sku`: its policy lets the product's KMS id through."""
    kms = catalog.kms_id(sku.kms_id)
    group = kms.name if kms else str(sku.kms_id)
    return Finding(
        "policy",
        "ok",
        f"the host serves {sku.name}",
        f"Its product policy lets the KMS id {group} through.",
        details={"sku_id": str(sku.id), "kms_id": str(sku.kms_id)},
    )
