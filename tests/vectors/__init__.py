"""Loads the captured vlmcs <-> vlmcsd conversations of every schema into one shape."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


@dataclass
class Exchange:
    """One request PDU and the host's answer, with the fields the capture tools printed."""

    request_pdu: int
    answer_pdu: int | None
    outcome: str
    hresult: int | None
    request: dict[str, Any] = field(default_factory=dict)
    response: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversation:
    """A whole captured connection: PDUs in wire order and the host's configuration."""

    name: str
    pdus: list[tuple[str, bytes | None]]
    exchanges: list[Exchange]
    ndr64: bool = True
    btfn: bool = True
    port: int = 1688
    server_command: str = ""

    def client_pdus(self) -> list[tuple[int, bytes]]:
        return [(i, raw) for i, (d, raw) in enumerate(self.pdus) if d == "c2s" and raw]

    def answer_to(self, index: int) -> bytes | None:
        for direction, raw in self.pdus[index + 1 :]:
            if direction == "s2c":
                return raw
        return None


def _direction(text: str) -> str:
    return "c2s" if text in ("c2s", "client_to_server") else "s2c"


def _server_flags(command: str) -> dict[str, Any]:
    port = re.search(r"-L \S+:(\d+)|-P (\d+)", command)
    return {
        "ndr64": "-N0" not in command,
        "btfn": "-B0" not in command,
        "port": int(next(g for g in port.groups() if g)) if port else 1688,
        "server_command": command,
    }


def _load_kms_vector(path: Path, data: dict[str, Any]) -> Conversation:
    pdus = [
        (_direction(p["direction"]), bytes.fromhex(p["hex"]) if "hex" in p else None)
        for p in data["pdus"]
    ]
    exchanges = [
        Exchange(
            e["request_pdu"],
            e.get("answer_pdu"),
            e["outcome"],
            int(e["hresult"], 16) if e.get("hresult") else None,
            e.get("request") or {},
            e.get("response") or {},
        )
        for e in data["exchanges"]
    ]
    return Conversation(
        path.stem, pdus, exchanges, **_server_flags(data["capture"]["server_command"])
    )


def _pair_requests(pdus: list[tuple[str, bytes | None]]) -> list[Exchange]:
    exchanges = []
    for index, (direction, raw) in enumerate(pdus):
        if direction == "c2s" and raw and raw[2] == 0:
            answer = next((j for j in range(index + 1, len(pdus)) if pdus[j][0] == "s2c"), None)
            exchanges.append(Exchange(index, answer, "ok", 0))
    return exchanges


def _load_capture(path: Path, data: dict[str, Any]) -> Conversation:
    pdus = [(_direction(p["direction"]), bytes.fromhex(p["hex"])) for p in data["pdus"]]
    exchanges = _pair_requests(pdus)
    for exchange in exchanges:
        decoded = data["pdus"][exchange.request_pdu]["decoded"].get("kms_request", {})
        base = decoded.get("base", {})
        exchange.request = {
            "version": base.get("version"),
            "application_id": base.get("app_id"),
            "sku_id": base.get("sku_id"),
            "kms_counted_id": base.get("kms_counted_id"),
            "client_machine_id": base.get("cmid"),
            "machine_name": base.get("machine_name"),
            "required_client_count": base.get("required_client_count"),
            "request_time_filetime": base.get("request_time_filetime"),
            "license_status": base.get("license_status"),
        }
        if exchange.answer_pdu is not None:
            answer = data["pdus"][exchange.answer_pdu]["decoded"].get("kms_response", {})
            rbase = answer.get("base", {})
            exchange.response = {
                "epid": rbase.get("epid"),
                "client_machine_id": rbase.get("cmid"),
                "current_client_count": rbase.get("current_count"),
                "activation_interval_minutes": rbase.get("activation_interval"),
                "renewal_interval_minutes": rbase.get("renewal_interval"),
                "hwid": answer.get("hwid"),
            }
    return Conversation(path.stem, pdus, exchanges, port=11688)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def _load_old(path: Path, data: dict[str, Any]) -> Conversation:
    pdus = [(_direction(p["direction"]), bytes.fromhex(p["hex"])) for p in data["pdus"]]
    exchanges = _pair_requests(pdus)
    seen = data.get("decoded_by_client", {})
    cmid = _first(seen.get("Client machine ID", ""))
    for exchange in exchanges:
        exchange.request = {
            "version": _first(seen.get("Protocol version")),
            "sku_id": _first(seen.get("SKU ID (aka Activation ID)", "")).split(" ")[0] or None,
            "kms_counted_id": _first(seen.get("KMS ID (aka KMS counted ID)", "")).split(" ")[0]
            or None,
            "machine_name": _first(seen.get("Workstation name")),
            "client_machine_id": cmid or None,
        }
        exchange.response = {"epid": _first(seen.get("KMS host extended PID"))}
    flags = _server_flags(data.get("server_options", ""))
    flags["port"] = 11688  # recorded through a relay listening there
    return Conversation(path.stem, pdus, exchanges, **flags)


def load(name: str) -> Conversation:
    """Load one vector file by stem."""
    path = HERE / f"{name}.json"
    data = json.loads(path.read_text())
    if data.get("schema") == "kms-vector/1":
        return _load_kms_vector(path, data)
    if "capture" in data and "kms_version" in data:
        return _load_capture(path, data)
    return _load_old(path, data)


def conversation_names() -> list[str]:
    """Every vector file that records a conversation."""
    skip = {"client_pdus", "error_paths"}
    return sorted(p.stem for p in HERE.glob("*.json") if p.stem not in skip)


def raw_json(name: str) -> Any:
    return json.loads((HERE / f"{name}.json").read_text())


def as_uuid(text: str | None) -> uuid.UUID | None:
    return uuid.UUID(text) if text else None
