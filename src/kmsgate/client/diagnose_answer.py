"""The answer step: ask the host for the product and explain its answer or refusal."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kmsgate.catalog import Catalog, Sku
from kmsgate.client.connection import ClientConnection
from kmsgate.client.diagnose_clock import clock_ok_finding, clock_skew_finding
from kmsgate.client.diagnose_host import count_finding, identity_finding, policy_finding
from kmsgate.client.diagnose_report import (
    EXIT_CODES,
    Finding,
    duration_text,
    error_finding,
    skipped_finding,
    utc_text,
)
from kmsgate.client.errors import KmsConnectionError
from kmsgate.client.exchange import ActivationResult, Clock, RandomBytes, RequestTemplate
from kmsgate.net import Endpoint
from kmsgate.protocol.engine import unix_from_filetime
from kmsgate.protocol.errors import (
    ActivationError,
    ProtocolError,
    RpcFaultError,
    VerificationError,
)
from kmsgate.protocol.hresult import HResult, describe, explain
from kmsgate.protocol.messages import encode_request

__all__ = ["check_answer"]

# A refusal's HRESULT names the step that explains it.
_REFUSAL_STEP: dict[int, str] = {
    HResult.PRODUCT_NOT_ALLOWED: "policy",
    HResult.TIME_SKEW: "clock",
    HResult.COUNT_INSUFFICIENT: "count",
}
# What a refusal leaves unknown, per step.
_NOT_IN_REFUSAL = {
    "identity": "a refusal carries no ePID",
    "policy": "the host refused before (or without) judging the product",
    "count": "a refusal carries no client count",
    "clock": "the host refused for another reason than the time stamp",
}
# A genuine client's activation lasts 180 days; a longer renewal interval lets it lapse.
ACTIVATION_VALIDITY_MINUTES = 180 * 24 * 60


@dataclass(slots=True)
class _Asker:
    """Sends requests on one bound connection, stamped with the (shifted) local clock."""

    conn: ClientConnection
    template: RequestTemplate
    clock: Clock
    random_bytes: RandomBytes

    async def send(self, shift: float = 0.0) -> ActivationResult:
        request = self.template.build(self.random_bytes, self.clock() + shift)
        message = encode_request(request, self.random_bytes(16))
        return await self.conn.send_message(request, message, strict=False)

    async def accepts(self, shift: float) -> bool | None:
        try:
            await self.send(shift)
        except ActivationError as exc:
            # Any other refusal means the host got past its time check.
            return exc.hresult != HResult.TIME_SKEW
        except (ProtocolError, KmsConnectionError):
            return None
        return True


def _hresult_finding(step: str, hresult: int, title: str, *, exit_code: int) -> Finding:
    info = explain(hresult)
    return error_finding(
        step,
        title,
        info.cause
        if info
        else f"The host answered {describe(hresult)}, a code kmsgate does not know.",
        info.fix if info else "Look the code up in the host's documentation.",
        hresult=hresult,
        exit_code=exit_code,
    )


def _answer_finding(result: ActivationResult, sku: Sku, where: str) -> Finding:
    request, response = result.request, result.response
    details: dict[str, Any] = {
        "protocol": f"{request.major_version}.{request.minor_version}",
        "syntax": result.syntax.value,
        "latency_ms": round(result.latency * 1000, 3),
        "machine_name": request.machine_name,
        "client_machine_id": str(request.client_machine_id),
        "request_time_utc": utc_text(unix_from_filetime(request.request_time)),
        "activation_interval": response.activation_interval,
        "renewal_interval": response.renewal_interval,
        "checks": {c.name: c.passed for c in result.checks},
    }
    failed = [c for c in result.checks if not c.passed and c.name != "client_count"]
    fatal = [c for c in failed if c.fatal]
    retry = duration_text(response.activation_interval * 60)
    renew = duration_text(response.renewal_interval * 60)
    intervals = (
        f"Not yet activated clients retry every {retry}, activated ones renew every {renew}."
    )
    if fatal:
        listed = "; ".join(f"{c.name}: {c.detail}" for c in fatal)
        return error_finding(
            "answer",
            f"{where} answered, but the answer fails the client's checks",
            f"Windows rejects an answer that does not verify ({listed}): the host's "
            "implementation is broken, or something on the way altered the traffic.",
            "Try another protocol version (--protocol) and compare with kmsgate as the host.",
            hresult=HResult.NO_KMS_CONTACTED,
            details=details,
        )
    title = (
        f"{where} answered {sku.name} over KMS v{request.major_version} "
        f"({result.syntax.value}) in {result.latency * 1000:.1f} ms"
    )
    explanation = "Every byte of the answer verified. " + intervals
    if response.renewal_interval >= ACTIVATION_VALIDITY_MINUTES:
        return Finding(
            "answer",
            "warning",
            title,
            explanation + " That renewal interval is not shorter than the 180 days an "
            "activation lasts, so clients would lapse before they renew.",
            "Lower renewal_interval (the default is 7 days: 10080 minutes).",
            details=details,
        )
    if failed:
        listed = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        return Finding(
            "answer",
            "warning",
            title,
            explanation + f" Minor oddities that Windows tolerates: {listed}.",
            details=details,
        )
    return Finding("answer", "ok", title, explanation, details=details)


async def check_answer(
    conn: ClientConnection,
    template: RequestTemplate,
    sku: Sku,
    catalog: Catalog,
    *,
    clock: Clock,
    shift: float = 0.0,
    random_bytes: RandomBytes = os.urandom,
    probe_skew: bool = True,
) -> list[Finding]:
    """Ask the host for `sku` and explain its answer: identity, policy, count and clock."""
    where = str(Endpoint(conn.host, conn.port))
    asker = _Asker(conn, template, clock, random_bytes)
    later = ("identity", "policy", "count", "clock")
    try:
        result = await asker.send(shift)
    except ActivationError as exc:
        hresult = exc.hresult
        step = _REFUSAL_STEP.get(hresult)
        code = EXIT_CODES[step] if step else EXIT_CODES["answer"]
        findings = [
            error_finding(
                "answer",
                f"{where} refused the request: {describe(hresult)}",
                f"The {step} step below explains it." if step else "",
                hresult=hresult,
                exit_code=code,
            )
            if step
            else _hresult_finding(
                "answer", hresult, f"{where} refused the request: {describe(hresult)}",
                exit_code=code,
            )
        ]  # fmt: skip
        for name in later:
            if name == step == "clock":
                sent = asker.clock() + shift
                findings.append(
                    await clock_skew_finding(
                        sent, shift, lambda extra: asker.accepts(shift + extra), probe_skew
                    )
                )
            elif name == step:
                findings.append(
                    _hresult_finding(
                        name,
                        hresult,
                        f"the host refuses {sku.name}: {describe(hresult)}",
                        exit_code=code,
                    )
                )
            else:
                findings.append(skipped_finding(name, _NOT_IN_REFUSAL[name]))
        return findings
    except RpcFaultError as exc:
        failure = error_finding(
            "answer",
            f"{where} answered the request with an RPC fault {describe(exc.status)}",
            "The RPC server took the bind but failed the call: it is not a working KMS "
            "host (an RPC service without the KMS operation, or a broken emulator).",
            "Point the client at a KMS host.",
            hresult=HResult.RPC_SERVER_UNAVAILABLE,
            details={"fault_status": f"0x{exc.status:08X}"},
        )
        return [failure, *(skipped_finding(n, "no answer to look at") for n in later)]
    except VerificationError as exc:
        failure = error_finding(
            "answer",
            f"{where} answered with a message that does not verify",
            f"The answer failed the {exc.check} check ({exc.detail}): the host's "
            "implementation is broken, or something on the way altered the traffic.",
            "Try another protocol version (--protocol) and compare with kmsgate as the host.",
            hresult=HResult.NO_KMS_CONTACTED,
        )
        return [failure, *(skipped_finding(n, "no usable answer") for n in later)]
    except (ProtocolError, KmsConnectionError) as exc:
        failure = error_finding(
            "answer",
            f"{where} did not answer the request properly",
            f"{exc}. The host took the bind but failed the KMS request itself.",
            "Check the host's log for this machine's address.",
            hresult=HResult.RPC_SERVER_UNAVAILABLE,
        )
        return [failure, *(skipped_finding(n, "no answer to look at") for n in later)]
    return [
        _answer_finding(result, sku, where),
        identity_finding(result, catalog, sku),
        policy_finding(sku, catalog),
        count_finding(result),
        clock_ok_finding(unix_from_filetime(result.request.request_time), shift),
    ]
