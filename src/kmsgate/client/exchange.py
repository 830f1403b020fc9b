"""One KMS exchange's data: the request template a client fills in and the verified result."""

from __future__ import annotations

import os
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from kmsgate.catalog import Sku
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.messages import NIL_UUID, KmsRequest, KmsResponse
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.verification import Check

__all__ = ["ActivationResult", "Clock", "RandomBytes", "RequestTemplate", "random_machine_name"]

RandomBytes = Callable[[int], bytes]
Clock = Callable[[], float]

_LABEL_FIRST = string.ascii_lowercase
_LABEL_REST = string.ascii_lowercase + string.digits
_TLDS = ("com", "net", "org", "local", "lan", "corp", "internal", "example")


def random_machine_name(random_bytes: RandomBytes = os.urandom) -> str:
    """A random DNS-like machine name such as `k7xq2.wrlm.corp` (like vlmcs's default)."""
    raw = random_bytes(24)

    def label(chunk: bytes) -> str:
        size = 3 + chunk[0] % 8
        body = chunk[1 : 1 + size]
        return _LABEL_FIRST[body[0] % 26] + "".join(_LABEL_REST[b % 36] for b in body[1:])

    return f"{label(raw[0:12])}.{label(raw[12:23])}.{_TLDS[raw[23] % len(_TLDS)]}"


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """Everything a request carries except what changes per request (CMID, name, time)."""

    application_id: uuid.UUID
    sku_id: uuid.UUID
    kms_counted_id: uuid.UUID
    required_client_count: int
    major_version: int = 6
    license_status: int = 2
    grace_time: int = 43200
    is_client_vm: int = 0
    previous_client_machine_id: uuid.UUID = NIL_UUID
    client_machine_id: uuid.UUID | None = None
    machine_name: str | None = None

    def __post_init__(self) -> None:
        if self.major_version not in (4, 5, 6):
            raise ValueError(f"protocol version must be 4, 5 or 6, not {self.major_version}")
        if self.machine_name is not None and len(self.machine_name.encode("utf-16-le")) >= 128:
            raise ValueError("machine name must fit 63 UTF-16 code units")

    @classmethod
    def from_sku(
        cls,
        sku: Sku,
        *,
        protocol: int | None = None,
        client_machine_id: uuid.UUID | None = None,
        machine_name: str | None = None,
        required_client_count: int | None = None,
        license_status: int = 2,
        grace_time: int = 43200,
    ) -> RequestTemplate:
        """Take application, SKU, KMS id, N-count and default protocol from a catalogue SKU."""
        return cls(
            application_id=sku.application_id,
            sku_id=sku.id,
            kms_counted_id=sku.kms_id,
            required_client_count=(
                sku.n_count_policy if required_client_count is None else required_client_count
            ),
            major_version=sku.default_protocol if protocol is None else protocol,
            license_status=license_status,
            grace_time=grace_time,
            client_machine_id=client_machine_id,
            machine_name=machine_name,
        )

    def build(self, random_bytes: RandomBytes, now: float) -> KmsRequest:
        """A request for this template: random CMID/name unless fixed, time `now` (Unix s)."""
        cmid = self.client_machine_id
        if cmid is None:
            cmid = uuid.UUID(bytes=random_bytes(16), version=4)
        name = self.machine_name
        if name is None:
            name = random_machine_name(random_bytes)
        return KmsRequest(
            major_version=self.major_version,
            application_id=self.application_id,
            sku_id=self.sku_id,
            kms_counted_id=self.kms_counted_id,
            client_machine_id=cmid,
            required_client_count=self.required_client_count,
            request_time=filetime_from_unix(now),
            machine_name=name,
            is_client_vm=self.is_client_vm,
            license_status=self.license_status,
            grace_time=self.grace_time,
            previous_client_machine_id=self.previous_client_machine_id,
        )


@dataclass(frozen=True, slots=True)
class ActivationResult:
    """One request and its verified answer."""

    host: str
    port: int
    request: KmsRequest
    request_message: bytes
    response: KmsResponse
    hwid: bytes | None
    checks: tuple[Check, ...]
    syntax: TransferSyntax
    call_id: int
    latency: float
    warnings: tuple[str, ...] = ()
    connect_latency: float | None = None

    @property
    def ok(self) -> bool:
        """Every fatal check passed."""
        return all(check.passed or not check.fatal for check in self.checks)
