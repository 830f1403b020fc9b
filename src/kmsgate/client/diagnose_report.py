"""The diagnose report: findings, the run they make up, its JSON schema and exit codes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from kmsgate.catalog import Sku

__all__ = [
    "EXIT_CODES",
    "SCHEMA",
    "STEPS",
    "Diagnosis",
    "Finding",
    "Status",
    "duration_text",
    "error_finding",
    "skipped_finding",
    "utc_text",
]

SCHEMA = "kmsgate-diagnose/1"
Status = Literal["ok", "warning", "error", "skipped"]
STEPS = ("dns", "tcp", "rpc", "answer", "identity", "policy", "count", "clock")
#: Exit status of a run whose first error is in this step (0 all ok, 1 warnings, 2 usage).
EXIT_CODES = {
    "dns": 3,
    "tcp": 4,
    "rpc": 5,
    "answer": 6,
    "policy": 7,
    "clock": 8,
    "count": 9,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing diagnose looked at: status, what it saw, what that means, how to fix it."""

    step: str
    status: Status
    title: str
    explanation: str = ""
    fix: str = ""
    hresult: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    exit_code: int = 0  # for an error: the code the run exits with if it is the first

    def to_json(self) -> dict[str, Any]:
        """The finding in the stable JSON schema."""
        return {
            "step": self.step,
            "status": self.status,
            "title": self.title,
            "explanation": self.explanation,
            "fix": self.fix or None,
            "hresult": None if self.hresult is None else f"0x{self.hresult:08X}",
            "details": dict(self.details),
        }


def error_finding(step: str, title: str, explanation: str, fix: str = "", **kw: Any) -> Finding:
    """An error of `step`; its exit code is the step's unless `exit_code` is given."""
    code = kw.pop("exit_code", EXIT_CODES[step])
    return Finding(step, "error", title, explanation, fix, exit_code=code, **kw)


def skipped_finding(step: str, why: str) -> Finding:
    """A step not run, and why."""
    return Finding(step, "skipped", why)


@dataclass(slots=True)
class Diagnosis:
    """Every finding of one run, in step order."""

    target: str
    product: Sku
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The first error's code; else 1 with warnings, 0 when everything is fine."""
        for finding in self.findings:
            if finding.status == "error":
                return finding.exit_code
        return 1 if any(f.status == "warning" for f in self.findings) else 0

    def to_json(self) -> dict[str, Any]:
        """The whole run in the stable JSON schema (`kmsgate-diagnose/1`)."""
        return {
            "schema": SCHEMA,
            "target": self.target,
            "product": {
                "sku_id": str(self.product.id),
                "name": self.product.name,
                "kms_id": str(self.product.kms_id),
                "n_count": self.product.n_count_policy,
            },
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "findings": [f.to_json() for f in self.findings],
        }


def duration_text(seconds: float) -> str:
    """`6 h 2 min`, `45 min`, `3 d 4 h`, to the minute."""
    minutes = round(abs(seconds) / 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if mins or not parts:
        parts.append(f"{mins} min")
    return " ".join(parts)


def utc_text(unix: float) -> str:
    """A Unix time as `YYYY-MM-DD HH:MM:SS UTC`."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
