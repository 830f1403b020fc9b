"""Every option of `kmsgate serve` as one field: its flag, KMSGATE_* variable and TOML key."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import NoDecode

from kmsgate.access.accounts.base import AccountSettings, LocalSettings
from kmsgate.auth.passwords import MAX_PASSWORD_LENGTH
from kmsgate.config.host_options import HostOptions
from kmsgate.config.panels import (
    PANEL_ACCESS,
    PANEL_DNS,
    PANEL_GATEWAY,
    PANEL_IDENTITY,
    PANEL_LISTENING,
    PANEL_LOGGING,
    PANEL_STORE,
    PANEL_WEB,
)


def default_data_dir() -> Path:
    """/var/lib/kmsgate for root (as a service), else the user's XDG data directory."""
    if os.geteuid() == 0:
        return Path("/var/lib/kmsgate")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kmsgate"


class ServeOptions(HostOptions):
    """The fields of ServeSettings, one per option; checks and sources live in ServeSettings.

    Fields keep the order of `kmsgate serve --help`: HostOptions' come first.
    """

    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="directory for the embedded database and the web session key",
        json_schema_extra={
            **PANEL_STORE,
            "doc_default": "/var/lib/kmsgate as root, else ~/.local/share/kmsgate",
        },
    )
    db: str | None = Field(
        None,
        description="database: a SQLite file path (relative: to the current directory), "
        "sqlite:////ABSOLUTE/PATH or postgresql://USER:PASSWORD@HOST[:PORT]/DB "
        "(default: DATA_DIR/kmsgate.db)",
        json_schema_extra=PANEL_STORE,
    )
    db_upgrade: bool = Field(
        True, description="apply database migrations on start", json_schema_extra=PANEL_STORE
    )
    no_store: bool = Field(
        False,
        description="record nothing (no database; implies --no-web)",
        json_schema_extra=PANEL_STORE,
    )
    store_queue: int = Field(
        10000,
        ge=1,
        description="records waiting for the database at most; beyond, answers wait for room",
        json_schema_extra=PANEL_STORE,
    )
    store_flush_interval: float = Field(
        0.2,
        ge=0.01,
        le=1.0,
        description="seconds a record may wait to be written with others in one transaction "
        "(longer: fewer, larger transactions, less CPU per record)",
        json_schema_extra=PANEL_STORE,
    )
    store_writer: Literal["process", "inline"] = Field(
        "inline",
        description="where records are written: inline in the serving process (one process, "
        "~40 MiB less memory) or a child process (database work off the KMS host's core, "
        "for hosts with a core to spare)",
        json_schema_extra=PANEL_STORE,
    )
    retention_days: int = Field(
        400,
        ge=0,
        description="delete activations, refusals, audit rows and clients not seen for this "
        "many days, hourly (0: keep everything)",
        json_schema_extra=PANEL_STORE,
    )
    web: str = Field(
        "127.0.0.1:8080",
        description="ADDR:PORT of the dashboard, API and /metrics",
        json_schema_extra=PANEL_WEB,
    )
    no_web: bool = Field(
        False, description="do not start the web listener", json_schema_extra=PANEL_WEB
    )
    web_cert: Path | None = Field(
        None,
        description="PEM certificate (chain) for HTTPS on the web listener",
        json_schema_extra=PANEL_WEB,
    )
    web_key: Path | None = Field(
        None, description="PEM private key for --web-cert", json_schema_extra=PANEL_WEB
    )
    web_max_connections: int = Field(
        1000,
        ge=1,
        description="web connections open at once, at most (also at most a quarter of the "
        "open-files limit); at the limit the oldest one still waiting for a request is closed",
        json_schema_extra=PANEL_WEB,
    )
    web_request_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a web client has to send a complete request (headers and body) "
        "after connecting or after its previous answer, and to take an answer it does not "
        "read; then the connection is closed",
        json_schema_extra=PANEL_WEB,
    )
    dns_publish: bool = Field(
        False,
        description="keep a _vlmcs._tcp SRV record for this host in DNS (RFC 2136 update on "
        "start and every --dns-interval seconds)",
        json_schema_extra=PANEL_DNS,
    )
    dns_domain: str | None = Field(
        None, description="DNS domain of the _vlmcs._tcp record", json_schema_extra=PANEL_DNS
    )
    dns_host: str | None = Field(
        None,
        description="target host name of the SRV record (default: this host's FQDN)",
        json_schema_extra=PANEL_DNS,
    )
    dns_port: int = Field(
        1688,
        ge=1,
        le=65535,
        description="port announced in the SRV record",
        json_schema_extra=PANEL_DNS,
    )
    dns_server: str | None = Field(
        None,
        description="ADDR:PORT of the primary DNS server accepting updates",
        json_schema_extra=PANEL_DNS,
    )
    dns_tsig_name: str | None = Field(
        None, description="TSIG key name for DNS updates", json_schema_extra=PANEL_DNS
    )
    dns_tsig_secret: SecretStr | None = Field(
        None,
        description="TSIG key secret (base64) for DNS updates",
        json_schema_extra=PANEL_DNS,
    )
    dns_tsig_algorithm: str = Field(
        "hmac-sha256", description="TSIG algorithm", json_schema_extra=PANEL_DNS
    )
    dns_ttl: int = Field(
        3600,
        ge=60,
        description="TTL of the published records (seconds)",
        json_schema_extra=PANEL_DNS,
    )
    dns_priority: int = Field(
        0, ge=0, le=65535, description="SRV priority", json_schema_extra=PANEL_DNS
    )
    dns_weight: int = Field(
        0, ge=0, le=65535, description="SRV weight", json_schema_extra=PANEL_DNS
    )
    dns_interval: int = Field(
        3600,
        ge=60,
        description="seconds between refreshes of the published record",
        json_schema_extra=PANEL_DNS,
    )
    user: str | None = Field(
        None,
        description="drop privileges to this user after binding (when started as root)",
        json_schema_extra=PANEL_LISTENING,
    )
    group: str | None = Field(
        None,
        description="drop privileges to this group (with --user)",
        json_schema_extra=PANEL_LISTENING,
    )
    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=64,
        description="name of this node in records and logs",
        json_schema_extra={**PANEL_IDENTITY, "doc_default": "the host name"},
    )
    allow_product: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="serve only these products: SKU id, KMS id or name glob (repeatable)",
        json_schema_extra=PANEL_ACCESS,
    )
    deny_product: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="refuse these products with 0xC004F042: SKU id, KMS id or name glob "
        "(repeatable; wins over --allow-product)",
        json_schema_extra=PANEL_ACCESS,
    )
    deny_unknown_products: bool = Field(
        False,
        description="refuse (0xC004F042) KMS ids no held host key covers, as a genuine host",
        json_schema_extra=PANEL_ACCESS,
    )
    gateway: bool = Field(
        False,
        description="serve a KMS connection only from an address whose user logged in on the "
        "web portal (one activation window per login)",
        json_schema_extra=PANEL_GATEWAY,
    )
    window: int = Field(
        300,
        ge=10,
        le=86400,
        description="seconds a login's activation window stays open",
        json_schema_extra=PANEL_GATEWAY,
    )
    nft: bool = Field(
        False,
        description="also enforce windows in the kernel: an nftables set of windowed addresses "
        "guards --nft-port (gateway mode; needs the nft command and CAP_NET_ADMIN)",
        json_schema_extra=PANEL_GATEWAY,
    )
    nft_table: str = Field(
        "kmsgate",
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$",
        description="nftables table (family inet) that kmsgate owns",
        json_schema_extra=PANEL_GATEWAY,
    )
    nft_port: int = Field(
        1688,
        ge=1,
        le=65535,
        description="TCP port the nftables rules guard",
        json_schema_extra=PANEL_GATEWAY,
    )
    quota_week: int | None = Field(
        None,
        ge=0,
        description="successful activations a user may have per rolling week",
        json_schema_extra=PANEL_GATEWAY,
    )
    quota_month: int | None = Field(
        None,
        ge=0,
        description="successful activations a user may have per rolling 30 days",
        json_schema_extra=PANEL_GATEWAY,
    )
    min_password_length: int = Field(
        12,
        ge=1,
        le=MAX_PASSWORD_LENGTH,
        description="characters a local account's password needs at least (kmsgate users add "
        "and passwd; administrators included)",
        json_schema_extra=PANEL_GATEWAY,
    )
    accounts: AccountSettings = Field(
        default_factory=LocalSettings,
        description="account backend for portal logins: a TOML table named accounts with "
        "backend = local, ldap, pop3 or sql and its options (JSON in the env var and flag)",
        json_schema_extra={**PANEL_GATEWAY, "doc_default": '`{"backend": "local"}`'},
    )
    public_address: str | None = Field(
        None,
        description="HOST[:PORT] clients use to reach the KMS listener (a DNS name, or the "
        "address of a NAT), shown in the portal's slmgr and ospp.vbs lines (default: the host "
        "name the browser used for the portal and the KMS listener's port)",
        json_schema_extra=PANEL_GATEWAY,
    )
    trust_proxy: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDR of reverse proxies whose X-Forwarded-For is believed (repeatable)",
        json_schema_extra=PANEL_WEB,
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log level", json_schema_extra=PANEL_LOGGING
    )
    log_format: Literal["text", "json", "mininfo"] = Field(
        "text",
        description="text; json (one object per line); mininfo "
        "(`time | address | machine name | product | license status` per activation)",
        json_schema_extra=PANEL_LOGGING,
    )
    log_file: Path | None = Field(
        None, description="log to this file instead of stderr", json_schema_extra=PANEL_LOGGING
    )
    log_max_bytes: int = Field(
        10_485_760,
        ge=0,
        description="rotate the log file at this size (0: never)",
        json_schema_extra=PANEL_LOGGING,
    )
    log_backups: int = Field(
        5, ge=0, description="rotated log files to keep", json_schema_extra=PANEL_LOGGING
    )
