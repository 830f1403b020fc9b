"""One settings model for every option: TOML file < KMSGATE_* environment < command line."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kmsgate.access.accounts.base import AccountSettings, LocalSettings
from kmsgate.access.products import ProductPattern
from kmsgate.access.source import parse_network
from kmsgate.protocol.epid import VALID_LCIDS, parse_epid, parse_hwid

DEFAULT_CONFIG_FILE = Path("/etc/kmsgate/kmsgate.toml")
DEFAULT_LISTEN = ["0.0.0.0:1688", "[::]:1688"]
EPID_MODES = ("random", "per-request")


def default_data_dir() -> Path:
    """/var/lib/kmsgate for root (as a service), else the user's XDG data directory."""
    if os.geteuid() == 0:
        return Path("/var/lib/kmsgate")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kmsgate"


def parse_listen(text: str) -> tuple[str, int]:
    """Split `ADDR:PORT`, `[V6]:PORT` or a bare port into (host, port)."""
    text = text.strip()
    if text.isdigit():
        host, port_text = "0.0.0.0", text
    elif text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"listen address {text!r} must look like [ADDR]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"listen address {text!r} must look like ADDR:PORT or [ADDR]:PORT")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"listen address {text!r} has an invalid host") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {text!r} has an invalid port")
    return host, int(port_text)


class ServeSettings(BaseSettings):
    """Everything `kmsgate serve` can be told; names match flags, env vars and file keys."""

    model_config = SettingsConfigDict(env_prefix="KMSGATE_", extra="forbid", validate_default=True)

    listen: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_LISTEN),
        description="ADDR:PORT to listen on (repeatable); IPv6 as [ADDR]:PORT",
    )
    upstream: str | None = Field(None, description="HOST:PORT of a genuine KMS host to relay to")
    epid: str = Field(
        "random",
        description="'random' (one ePID per product group for the whole run), 'per-request', "
        "or a fixed ePID answered for every product",
    )
    hwid: str = Field("random", description="host HWID for v6 answers: 16 hex digits or 'random'")
    lcid: int | None = Field(None, description="LCID in generated ePIDs (default: random)")
    client_count: int | None = Field(
        None, ge=0, le=0xFFFFFFFF, description="client count to report (default: 2 x N-count)"
    )
    activation_interval: int = Field(120, ge=15, description="minutes between retries")
    renewal_interval: int = Field(10080, ge=15, description="minutes between renewals")
    ndr64: bool = Field(True, description="accept the NDR64 transfer syntax")
    btfn: bool = Field(True, description="acknowledge bind-time feature negotiation")
    max_connections: int = Field(10000, ge=1, description="open connections at most")
    idle_timeout: float = Field(
        30.0, gt=0, description="seconds a connection may stay without a complete PDU"
    )
    max_clock_skew: int | None = Field(
        None, ge=60, description="refuse requests whose clock differs more (seconds; off)"
    )
    allow: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="CIDR allowed to connect (repeatable; default: loopback, RFC 1918, "
        "link-local and IPv6 ULA)",
    )
    deny: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CIDR refused even when allowed (repeatable; wins)"
    )
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="directory for the embedded database and the web session key",
        json_schema_extra={"doc_default": "/var/lib/kmsgate as root, else ~/.local/share/kmsgate"},
    )
    db: str | None = Field(
        None,
        description="database URL: sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB "
        "(default: sqlite:///DATA_DIR/kmsgate.db)",
    )
    db_upgrade: bool = Field(True, description="apply database migrations on start")
    no_store: bool = Field(False, description="record nothing (no database; implies --no-web)")
    store_queue: int = Field(
        10000, ge=1, description="records waiting for the database at most before dropping"
    )
    store_flush_interval: float = Field(
        0.2,
        ge=0.01,
        le=1.0,
        description="seconds a record may wait to be written with others in one transaction "
        "(longer: fewer, larger transactions, less CPU per record)",
    )
    store_writer: Literal["process", "inline"] = Field(
        "process",
        description="where records are written: a child process (database work off the KMS "
        "host's core) or inline in the serving process (one process, less memory)",
    )
    web: str = Field("127.0.0.1:8080", description="ADDR:PORT of the dashboard, API and /metrics")
    no_web: bool = Field(False, description="do not start the web listener")
    web_cert: Path | None = Field(
        None, description="PEM certificate (chain) for HTTPS on the web listener"
    )
    web_key: Path | None = Field(None, description="PEM private key for --web-cert")
    web_max_connections: int = Field(
        1000,
        ge=1,
        description="web connections open at once, at most (also at most a quarter of the "
        "open-files limit); at the limit the oldest one still waiting for a request is closed",
    )
    web_request_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a web client has to send a complete request (headers and body) "
        "after connecting or after its previous answer; then the connection is closed",
    )
    dns_publish: bool = Field(
        False,
        description="keep a _vlmcs._tcp SRV record for this host in DNS (RFC 2136 update on "
        "start and every --dns-interval seconds)",
    )
    dns_domain: str | None = Field(None, description="DNS domain of the _vlmcs._tcp record")
    dns_host: str | None = Field(
        None, description="target host name of the SRV record (default: this host's FQDN)"
    )
    dns_port: int = Field(1688, ge=1, le=65535, description="port announced in the SRV record")
    dns_server: str | None = Field(
        None, description="ADDR:PORT of the primary DNS server accepting updates"
    )
    dns_tsig_name: str | None = Field(None, description="TSIG key name for DNS updates")
    dns_tsig_secret: SecretStr | None = Field(
        None, description="TSIG key secret (base64) for DNS updates"
    )
    dns_tsig_algorithm: str = Field("hmac-sha256", description="TSIG algorithm")
    dns_ttl: int = Field(3600, ge=60, description="TTL of the published records (seconds)")
    dns_priority: int = Field(0, ge=0, le=65535, description="SRV priority")
    dns_weight: int = Field(0, ge=0, le=65535, description="SRV weight")
    dns_interval: int = Field(
        3600, ge=60, description="seconds between refreshes of the published record"
    )
    user: str | None = Field(
        None, description="drop privileges to this user after binding (when started as root)"
    )
    group: str | None = Field(None, description="drop privileges to this group (with --user)")
    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=64,
        description="name of this node in records and logs",
        json_schema_extra={"doc_default": "the host name"},
    )
    allow_product: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="serve only these products: SKU id, KMS id or name glob (repeatable)",
    )
    deny_product: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="refuse these products with 0xC004F042: SKU id, KMS id or name glob "
        "(repeatable; wins over --allow-product)",
    )
    deny_unknown_products: bool = Field(
        False, description="refuse KMS ids missing from the catalogue (0xC004F042)"
    )
    gateway: bool = Field(
        False,
        description="serve a KMS connection only from an address whose user logged in on the "
        "web portal (one activation window per login)",
    )
    window: int = Field(
        300, ge=10, le=86400, description="seconds a login's activation window stays open"
    )
    nft: bool = Field(
        False,
        description="also enforce windows in the kernel: an nftables set of windowed addresses "
        "guards --nft-port (gateway mode; needs the nft command and CAP_NET_ADMIN)",
    )
    nft_table: str = Field(
        "kmsgate",
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$",
        description="nftables table (family inet) that kmsgate owns",
    )
    nft_port: int = Field(1688, ge=1, le=65535, description="TCP port the nftables rules guard")
    quota_week: int | None = Field(
        None, ge=0, description="successful activations a user may have per rolling week"
    )
    quota_month: int | None = Field(
        None, ge=0, description="successful activations a user may have per rolling 30 days"
    )
    accounts: AccountSettings = Field(
        default_factory=LocalSettings,
        description="account backend for portal logins: a TOML table named accounts with "
        "backend = local, ldap, pop3 or sql and its options (JSON in the env var and flag)",
        json_schema_extra={"doc_default": '`{"backend": "local"}`'},
    )
    trust_proxy: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDR of reverse proxies whose X-Forwarded-For is believed (repeatable)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["text", "json", "mininfo"] = Field(
        "text",
        description="text; json (one object per line); mininfo "
        "(`time | address | machine name | product | license status` per activation)",
    )
    log_file: Path | None = Field(None, description="log to this file instead of stderr")
    log_max_bytes: int = Field(
        10_485_760, ge=0, description="rotate the log file at this size (0: never)"
    )
    log_backups: int = Field(5, ge=0, description="rotated log files to keep")

    @field_validator("accounts", mode="before")
    @classmethod
    def _accounts_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value)
        return value

    @field_validator(
        "listen", "allow", "deny", "allow_product", "deny_product", "trust_proxy", mode="before"
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in value.replace(",", " ").split() if part]
        return value

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one listen address is needed")
        for item in value:
            parse_listen(item)
        return value

    @field_validator("web")
    @classmethod
    def _check_web(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str | None) -> str | None:
        if value is not None and (value.strip().isdigit() or parse_listen(value)[1] == 0):
            raise ValueError(f"upstream {value!r} must look like HOST:PORT or [ADDR]:PORT")
        return value

    @property
    def upstream_address(self) -> tuple[str, int] | None:
        """(host, port) of the relay target, or None when answering locally."""
        return parse_listen(self.upstream) if self.upstream else None

    @field_validator("db")
    @classmethod
    def _check_db(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql:", "postgres:")):
            raise ValueError("database URL must start with sqlite:// or postgresql://")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServeSettings:
        if self.gateway and self.no_store:
            raise ValueError("--gateway keeps windows in the store: it cannot run with --no-store")
        if self.nft and not self.gateway:
            raise ValueError("--nft mirrors gateway windows: it needs --gateway")
        if self.nft and self.user is not None:
            # nft runs at every login, long after --user dropped root and CAP_NET_ADMIN.
            raise ValueError("--nft cannot run with --user; grant CAP_NET_ADMIN instead")
        if (self.web_cert is None) != (self.web_key is None):
            raise ValueError("--web-cert and --web-key go together")
        if self.dns_publish and not (self.dns_domain and self.dns_server):
            raise ValueError("--dns-publish needs --dns-domain and --dns-server")
        if (self.dns_tsig_name is None) != (self.dns_tsig_secret is None):
            raise ValueError("--dns-tsig-name and --dns-tsig-secret go together")
        return self

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory."""
        return self.db or f"sqlite:///{self.data_dir / 'kmsgate.db'}"

    @field_validator("allow_product", "deny_product")
    @classmethod
    def _check_products(cls, value: list[str]) -> list[str]:
        for item in value:
            ProductPattern.parse(item)
        return value

    @field_validator("allow", "deny", "trust_proxy")
    @classmethod
    def _check_networks(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            parse_network(item)
        return value

    @field_validator("epid")
    @classmethod
    def _check_epid(cls, value: str) -> str:
        if value not in EPID_MODES:
            parse_epid(value)
        return value

    @field_validator("hwid")
    @classmethod
    def _check_hwid(cls, value: str) -> str:
        if value != "random":
            parse_hwid(value)
        return value

    @field_validator("lcid")
    @classmethod
    def _check_lcid(cls, value: int | None) -> int | None:
        if value is not None and value not in VALID_LCIDS:
            raise ValueError(f"{value} is not a Windows LCID a KMS host reports")
        return value

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        return [parse_listen(item) for item in self.listen]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **cli: Any) -> ServeSettings:
    """Merge the TOML file (explicit, else /etc/kmsgate/kmsgate.toml if present), env and CLI."""
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    given = {key: value for key, value in cli.items() if value is not None}

    class _FileSettings(ServeSettings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return ServeSettings.model_validate(_FileSettings(**given).model_dump())


def _default_text(name: str) -> str:
    field = ServeSettings.model_fields[name]
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "doc_default" in extra:
        return str(extra["doc_default"])
    value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(f"`{item}`" for item in value)
    return f"`{value}`"


def settings_reference() -> str:
    """Markdown reference of every `serve` option, generated so it cannot drift."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `kmsgate.config.ServeSettings` by `tools/gen_config_docs.py`.",
        "Each option is a command-line flag, a `KMSGATE_*` environment variable and a key of",
        "the TOML config file (`--config`, default `/etc/kmsgate/kmsgate.toml` when it exists).",
        "Precedence: config file < environment < command line. Lists in the environment are",
        "comma- or space-separated (`KMSGATE_LISTEN=127.0.0.1:1688,[::1]:1688`).",
        "",
        "| flag | environment | file key | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, field in ServeSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool and not name.startswith("no_"):
            flag = f"{flag} / --no-{name.replace('_', '-')}"
        lines.append(
            f"| `{flag}` | `KMSGATE_{name.upper()}` | `{name}` | {_default_text(name)} "
            f"| {field.description} |"
        )
    return "\n".join(lines) + "\n"
