"""JSON records of what `kmsgate client` sent, received and checked."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kmsgate.catalog import Catalog, Sku
from kmsgate.client.errors import KmsConnectionError, describe_error
from kmsgate.client.exchange import ActivationResult, RequestTemplate
from kmsgate.protocol.engine import unix_from_filetime
from kmsgate.protocol.errors import ActivationError, RpcFaultError, VerificationError
from kmsgate.protocol.licensing import license_status_name
from kmsgate.protocol.messages import KmsRequest
from kmsgate.protocol.verification import Check


def utc_text(filetime: int) -> str | None:
    try:
        when = datetime.fromtimestamp(unix_from_filetime(filetime), UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return when.isoformat().replace("+00:00", "Z")


def request_record(request: KmsRequest) -> dict[str, Any]:
    """Every field of a request as JSON values."""
    return {
        "version": f"{request.major_version}.{request.minor_version}",
        "is_client_vm": request.is_client_vm,
        "license_status": request.license_status,
        "license_status_name": license_status_name(request.license_status),
        "grace_time": request.grace_time,
        "application_id": str(request.application_id),
        "sku_id": str(request.sku_id),
        "kms_counted_id": str(request.kms_counted_id),
        "client_machine_id": str(request.client_machine_id),
        "required_client_count": request.required_client_count,
        "request_time": request.request_time,
        "request_time_utc": utc_text(request.request_time),
        "previous_client_machine_id": str(request.previous_client_machine_id),
        "machine_name": request.machine_name,
    }


def check_record(check: Check) -> dict[str, Any]:
    """One strict check: passed, fatal, and why it failed."""
    return {
        "name": check.name,
        "passed": check.passed,
        "fatal": check.fatal,
        "detail": "" if check.passed else check.detail,
    }


def result_record(index: int, result: ActivationResult) -> dict[str, Any]:
    """One request/answer pair with every check, warning and timing."""
    response = result.response
    return {
        "index": index,
        "host": result.host,
        "port": result.port,
        "call_id": result.call_id,
        "syntax": result.syntax.value,
        "latency_ms": round(result.latency * 1000, 3),
        "connect_latency_ms": (
            None if result.connect_latency is None else round(result.connect_latency * 1000, 3)
        ),
        "request": request_record(result.request),
        "request_message": result.request_message.hex(),
        "response": {
            "version": f"{response.major_version}.{response.minor_version}",
            "epid": response.epid,
            "client_machine_id": str(response.client_machine_id),
            "response_time": response.response_time,
            "current_client_count": response.current_client_count,
            "activation_interval": response.activation_interval,
            "renewal_interval": response.renewal_interval,
            "hwid": None if result.hwid is None else result.hwid.hex().upper(),
        },
        "checks": [check_record(c) for c in result.checks],
        "warnings": list(result.warnings),
        "ok": result.ok,
    }


def error_record(exc: BaseException) -> dict[str, Any]:
    """A failure as JSON: type, one-line reason and the code behind it."""
    record: dict[str, Any] = {"type": type(exc).__name__, "message": describe_error(exc)}
    if isinstance(exc, VerificationError):
        record["check"] = exc.check
    if isinstance(exc, RpcFaultError):
        record["status"] = f"0x{exc.status:08X}"
    if isinstance(exc, ActivationError):
        record["hresult"] = f"0x{exc.hresult:08X}"
    if isinstance(exc, KmsConnectionError):
        record["hresult"] = f"0x{exc.hresult:08X}"
    return record


def product_record(catalog: Catalog, sku: Sku, template: RequestTemplate) -> dict[str, Any]:
    kms = catalog.kms_id(sku.kms_id)
    app = catalog.application(sku.application_id)
    return {
        "sku_id": str(sku.id),
        "name": sku.name,
        "kms_id": str(sku.kms_id),
        "kms_name": kms.name if kms else None,
        "application_id": str(sku.application_id),
        "application_name": app.name if app else None,
        "n_count_policy": template.required_client_count,
        "protocol": template.major_version,
    }
