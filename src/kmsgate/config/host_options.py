"""The options of what the KMS host serves: listeners, identity, limits, source access."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kmsgate.config.addresses import DEFAULT_LISTEN
from kmsgate.config.panels import (
    PANEL_ACCESS,
    PANEL_IDENTITY,
    PANEL_LIMITS,
    PANEL_LISTENING,
)


class HostOptions(BaseSettings):
    """Listening, identity, protocol limits and source access; ServeOptions adds the rest."""

    model_config = SettingsConfigDict(env_prefix="KMSGATE_", extra="forbid", validate_default=True)

    listen: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_LISTEN),
        description="ADDR:PORT to listen on (repeatable); IPv6 as [ADDR]:PORT",
        json_schema_extra=PANEL_LISTENING,
    )
    upstream: str | None = Field(
        None,
        description="HOST:PORT of a genuine KMS host to relay to",
        json_schema_extra=PANEL_LISTENING,
    )
    epid: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["random"],
        description="ePIDs (repeatable): 'random' (one saved per host key), 'per-request', one "
        "ePID for every key, or KEY=EPID (windows, office2010 ... office2024)",
        json_schema_extra={**PANEL_IDENTITY, "doc_default": "`random`"},
    )
    hwid: str = Field(
        "random",
        description="host HWID for v6 answers: 16 hex digits or 'random' (saved)",
        json_schema_extra=PANEL_IDENTITY,
    )
    lcid: int = Field(
        1033,
        description="LCID in generated ePIDs (1033 is en-US)",
        json_schema_extra=PANEL_IDENTITY,
    )
    host_build: int | None = Field(
        None,
        ge=1,
        le=99999,
        description="Windows build the host claims; it chooses the platform id and host keys "
        "(default 26100; 7601 with --no-ndr64)",
        json_schema_extra=PANEL_IDENTITY,
    )
    identity_file: Path | None = Field(
        None,
        description="file keeping generated ePIDs and HWID (share it for one identity)",
        json_schema_extra={**PANEL_IDENTITY, "doc_default": "DATA_DIR/identity.json"},
    )
    catalog: Path | None = Field(
        None,
        description="product file instead of the built-in one (`kmsgate products import`)",
        json_schema_extra=PANEL_IDENTITY,
    )
    count_mode: Literal["fixed", "seen"] = Field(
        "fixed",
        description="'fixed' (--client-count, else 2 x N) or 'seen' (distinct machines of the "
        "last 30 days, as a genuine host)",
        json_schema_extra=PANEL_IDENTITY,
    )
    client_count: int | None = Field(
        None,
        ge=0,
        le=0xFFFFFFFF,
        description="client count to report in fixed mode (default: 2 x N-count)",
        json_schema_extra=PANEL_IDENTITY,
    )
    activation_interval: int = Field(
        120,
        ge=15,
        le=43200,
        description="minutes between retries (15-43200)",
        json_schema_extra=PANEL_IDENTITY,
    )
    renewal_interval: int = Field(
        10080,
        ge=15,
        le=43200,
        description="minutes between renewals (15-43200)",
        json_schema_extra=PANEL_IDENTITY,
    )
    ndr64: bool = Field(
        True, description="accept the NDR64 transfer syntax", json_schema_extra=PANEL_IDENTITY
    )
    btfn: bool = Field(
        True,
        description="acknowledge bind-time feature negotiation",
        json_schema_extra=PANEL_IDENTITY,
    )
    max_connections: int = Field(
        10000, ge=1, description="open connections at most", json_schema_extra=PANEL_LIMITS
    )
    max_connections_per_source: int = Field(
        64,
        ge=0,
        description="open connections from one client address at most (0: no limit)",
        json_schema_extra=PANEL_LIMITS,
    )
    connection_lifetime: float = Field(
        300.0,
        ge=0,
        description="seconds a connection may stay open, however busy (0: no limit)",
        json_schema_extra=PANEL_LIMITS,
    )
    max_requests_per_connection: int = Field(
        1000,
        ge=0,
        description="KMS requests answered on one connection before closing it (0: no limit)",
        json_schema_extra=PANEL_LIMITS,
    )
    idle_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a connection may stay without a KMS request",
        json_schema_extra=PANEL_LIMITS,
    )
    busy_poll: int = Field(
        500,
        ge=0,
        le=10000,
        description="microseconds the host keeps polling for the next request after answers "
        "leave, before its core may sleep (0: at once; a halted virtual core wakes slowly)",
        json_schema_extra=PANEL_LIMITS,
    )
    max_clock_skew: int = Field(
        14400,
        ge=0,
        le=86400 * 365,
        description="refuse (0xC004F06C) clients whose clock is off by more seconds; 0: off",
        json_schema_extra=PANEL_LIMITS,
    )
    allow: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="CIDR allowed to connect (repeatable; default: loopback, RFC 1918, "
        "link-local and IPv6 ULA; an IPv4-mapped network, ::ffff:10.0.0.0/104, means its IPv4 "
        "network, as in --deny and --trust-proxy)",
        json_schema_extra=PANEL_ACCESS,
    )
    deny: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDR refused even when allowed (repeatable; wins)",
        json_schema_extra=PANEL_ACCESS,
    )
