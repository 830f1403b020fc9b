"""One settings model for every option: TOML file < KMSGATE_* environment < command line."""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from kmsgate.access.accounts.base import (
    AccountSettings,
    LdapSettings,
    LocalSettings,
    Pop3Settings,
    SqlSettings,
)
from kmsgate.access.products import ProductPattern
from kmsgate.access.source import parse_network
from kmsgate.auth.passwords import MAX_PASSWORD_LENGTH
from kmsgate.net import parse_endpoint
from kmsgate.protocol.epid import VALID_LCIDS, parse_epid_option, parse_hwid

DEFAULT_CONFIG_FILE = Path("/etc/kmsgate/kmsgate.toml")
DEFAULT_LISTEN = ["0.0.0.0:1688", "[::]:1688"]
_URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_DB_SCHEME_NO_SLASHES = re.compile(r"^(sqlite|postgres|postgresql)(\+\w+)?:(?!//)", re.I)
DB_FORMS = "a file path, sqlite:////ABSOLUTE/PATH or postgresql://USER@HOST[:PORT]/DB"


def default_data_dir() -> Path:
    """/var/lib/kmsgate for root (as a service), else the user's XDG data directory."""
    if os.geteuid() == 0:
        return Path("/var/lib/kmsgate")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kmsgate"


def parse_listen(text: str) -> tuple[str, int]:
    """Split `ADDR:PORT`, `[V6]:PORT` or a bare port (all addresses) into (host, port)."""
    endpoint = parse_endpoint(
        text,
        port_required=True,
        allow_port_zero=True,
        bare_port_host="0.0.0.0",
        what="listen address",
    )
    assert endpoint.port is not None  # port_required
    return endpoint.host, endpoint.port


def parse_public_address(text: str) -> tuple[str, int | None]:
    """Split `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT` (a DNS name or an IP address)."""
    endpoint = parse_endpoint(text, allow_bare_ipv6=False, what="public address")
    return endpoint.host, endpoint.port


# Help panels of `kmsgate serve --help` and sections of the man page, in display order. Every
# field names its panel in json_schema_extra, so a new setting has to choose where it shows.
PANELS: dict[str, str] = {
    "listening": "Listening",
    "identity": "Identity and protocol",
    "access": "Access",
    "limits": "Limits",
    "store": "Store",
    "web": "Web",
    "gateway": "Gateway and accounts",
    "dns": "DNS publishing",
    "logging": "Logging",
}
PANEL_LISTENING: Final[JsonDict] = {"panel": "listening"}
PANEL_IDENTITY: Final[JsonDict] = {"panel": "identity"}
PANEL_ACCESS: Final[JsonDict] = {"panel": "access"}
PANEL_LIMITS: Final[JsonDict] = {"panel": "limits"}
PANEL_STORE: Final[JsonDict] = {"panel": "store"}
PANEL_WEB: Final[JsonDict] = {"panel": "web"}
PANEL_GATEWAY: Final[JsonDict] = {"panel": "gateway"}
PANEL_DNS: Final[JsonDict] = {"panel": "dns"}
PANEL_LOGGING: Final[JsonDict] = {"panel": "logging"}


def _split_sqlite_url(url: str) -> tuple[str, str, str] | None:
    """(prefix up to the path, path, ?query) of a sqlite URL; None for other URLs."""
    match = _URL_SCHEME.match(url)
    if match is None or match["scheme"].lower().split("+")[0] != "sqlite":
        return None
    rest = url[match.end() :]
    # sqlite:///relative and sqlite:////absolute: the part after the third slash is the path.
    if not rest.startswith("/"):
        return url[: match.end()], "", rest
    path, sep, query = rest[1:].partition("?")
    return url[: match.end() + 1], path, sep + query


def _relative_db(text: str) -> bool:
    """Whether a --db value names a SQLite file by a relative path."""
    text = text.strip()
    parts = _split_sqlite_url(text)
    if parts is not None:
        path = parts[1]
        return bool(path) and path != ":memory:" and not path.startswith(("/", "file:"))
    return not _URL_SCHEME.match(text) and not Path(text).expanduser().is_absolute()


def _absolute(path: str) -> Path:
    """`path` against the current directory, `..` folded, symbolic links left as they are."""
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def absolute_db_url(text: str) -> str:
    """The database URL for a --db value: a file path or a sqlite:// or postgresql:// URL.

    A plain path becomes a SQLite URL; relative paths (plain or sqlite:///relative, which
    SQLAlchemy reads against the current directory) are made absolute here, once, so every
    process and every log line names the same file.
    """
    text = text.strip()
    if not text:
        raise ValueError(f"the database is empty: give {DB_FORMS}")
    if _DB_SCHEME_NO_SLASHES.match(text):
        raise ValueError(f"{text!r} is not a database URL: give {DB_FORMS}")
    match = _URL_SCHEME.match(text)
    if match is None:
        if "?" in text or "#" in text:
            raise ValueError(f"database path {text!r} must not contain '?' or '#'")
        return f"sqlite:///{_absolute(text)}"
    backend = match["scheme"].lower().split("+")[0]
    if backend == "sqlite":
        parts = _split_sqlite_url(text)
        assert parts is not None
        prefix, path, query = parts
        if _relative_db(text):
            return f"{prefix}{_absolute(path)}{query}"
        return text
    if backend in ("postgresql", "postgres"):
        try:
            urlsplit(text).port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            raise ValueError(
                f"database URL {mask_url_password(text)!r} has an invalid port"
            ) from None
        return text
    raise ValueError(f"{backend}:// databases are not supported: give {DB_FORMS}")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (absolute after absolute_db_url), None for anything else."""
    parts = _split_sqlite_url(url)
    if parts is None or not parts[1] or parts[1] == ":memory:" or parts[1].startswith("file:"):
        return None
    return Path(parts[1])


def mask_url_password(text: str) -> str:
    """A URL with the password of its user info replaced by ***."""
    return re.sub(r"^([A-Za-z][\w+.-]*://[^:@/?#]*):.*@(?=[^@]*$)", r"\1:***@", text)


class ServeSettings(BaseSettings):
    """Everything `kmsgate serve` can be told; names match flags, env vars and file keys."""

    model_config = SettingsConfigDict(env_prefix="KMSGATE_", extra="forbid", validate_default=True)
    _db_note: str | None = PrivateAttr(None)

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
        "link-local and IPv6 ULA)",
        json_schema_extra=PANEL_ACCESS,
    )
    deny: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDR refused even when allowed (repeatable; wins)",
        json_schema_extra=PANEL_ACCESS,
    )
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
        "process",
        description="where records are written: a child process (database work off the KMS "
        "host's core) or inline in the serving process (one process, less memory)",
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
        "after connecting or after its previous answer; then the connection is closed",
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

    @field_validator("accounts", mode="before")
    @classmethod
    def _accounts_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"not JSON ({exc.msg} at character {exc.pos}); write it as "
                    '{"backend": "ldap", "url": "ldaps://...", ...}'
                ) from None
        return value

    @field_validator("listen", "allow", "deny", "trust_proxy", "epid", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in value.replace(",", " ").split() if part]
        return value

    @field_validator("allow_product", "deny_product", mode="before")
    @classmethod
    def _split_product_list(cls, value: Any) -> Any:
        # Product names hold spaces ("Windows 10/11 Pro"): only commas separate them.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
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
        return None if value is None else absolute_db_url(value)

    @model_validator(mode="wrap")
    @classmethod
    def _note_relative_db(
        cls, data: Any, handler: ModelWrapValidatorHandler[ServeSettings]
    ) -> ServeSettings:
        settings = handler(data)
        raw = data.get("db") if isinstance(data, dict) else None
        if isinstance(raw, str) and settings.db is not None and _relative_db(raw):
            raw = raw.strip()
            note = f"db {raw!r} is a relative path: using {settings.db_path}"
            if raw.lower().startswith("sqlite"):
                absolute = "/" + raw.split(":///", 1)[-1]
                note += f" (for {absolute} write sqlite:///{absolute} or just {absolute})"
            settings._db_note = note
        return settings

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
    def identity_path(self) -> Path:
        """Where the host's generated identity is kept."""
        return self.identity_file or self.data_dir / "identity.json"

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory (always absolute)."""
        return self.db or absolute_db_url(str(self.data_dir / "kmsgate.db"))

    @property
    def db_path(self) -> Path | None:
        """The SQLite database file, None for PostgreSQL or an in-memory database."""
        return sqlite_path(self.db_url)

    @property
    def db_note(self) -> str | None:
        """Set when --db was a relative path or SQLite URL: which absolute file it means."""
        return self._db_note

    def warnings(self) -> list[str]:
        """Accepted settings that probably do not mean what was meant (host bits in a CIDR)."""
        found = []
        for name in ("allow", "deny", "trust_proxy"):
            for item in getattr(self, name) or ():
                try:
                    ipaddress.ip_network(item.strip(), strict=True)
                except ValueError:
                    network = parse_network(item)
                    found.append(f"{name}: {item} has host bits set; using the network {network}")
        return found

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
    def _check_epid(cls, value: list[str]) -> list[str]:
        parse_epid_option(value)
        return value

    @field_validator("public_address")
    @classmethod
    def _check_public_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_public_address(value)
        return value

    @field_validator("hwid")
    @classmethod
    def _check_hwid(cls, value: str) -> str:
        if value != "random":
            parse_hwid(value)
        return value

    @field_validator("lcid")
    @classmethod
    def _check_lcid(cls, value: int) -> int:
        if value not in VALID_LCIDS:
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


def effective_config_file(config: Path | None) -> Path | None:
    """The file `load_settings` reads: the given one, else the default when it exists."""
    if config is not None:
        return config
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(config_file: Path | None = None, **cli: Any) -> ServeSettings:
    """Merge the TOML file (explicit, else /etc/kmsgate/kmsgate.toml if present), env and CLI."""
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    given = {key: value for key, value in cli.items() if value is not None}

    class _FileSettings(ServeSettings):
        model_config = SettingsConfigDict(toml_file=config_file)

    merged = _FileSettings(**given)
    settings = ServeSettings.model_validate(merged.model_dump())
    settings._db_note = merged._db_note  # the second pass sees the absolute URL only
    return settings


# ---------------------------------------------------------------- errors in the user's words

_BACKENDS: Final[dict[str, type[LocalSettings | LdapSettings | Pop3Settings | SqlSettings]]] = {
    "local": LocalSettings,
    "ldap": LdapSettings,
    "pop3": Pop3Settings,
    "sql": SqlSettings,
}
_SECRET_KEY = re.compile(r"password|passwd|secret|token", re.IGNORECASE)
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")
_QUOTED = re.compile(r"'([^']*)'")
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")
_LIMITS: Final = {
    "greater_than": ("gt", "must be greater than {}"),
    "greater_than_equal": ("ge", "is below the minimum {}"),
    "less_than": ("lt", "must be less than {}"),
    "less_than_equal": ("le", "is above the maximum {}"),
}
_TYPES: Final = {
    "int_parsing": "is not a whole number",
    "int_type": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "bool_parsing": "is not true or false",
    "bool_type": "is not true or false",
    "string_type": "is not text",
    "list_type": "is not a list",
    "model_type": "is not a table of settings",
    "model_attributes_type": "is not a table of settings",
    "dict_type": "is not a table of settings",
}


def error_key(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a file key: `listen[1]`, `accounts.url`."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] == "accounts" and parts[1] in _BACKENDS:
        del parts[1]  # the discriminated union's tag is not a key of the file
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_key(key: str, backend: str | None = None) -> str:
    """`key: unknown key`, with the setting it was probably meant to be."""
    owner, _, name = key.rpartition(".")
    model = _BACKENDS.get(backend or "") if owner == "accounts" else None
    fields = list((model or ServeSettings).model_fields) if owner in ("", "accounts") else []
    if name.replace("-", "_") in fields and "-" in name:
        return f"{key}: unknown key (did you mean {name.replace('-', '_')}? keys use underscores)"
    return f"{key}: unknown key{_hint(name, fields)}"


def _shown(key: str, value: Any) -> str:
    """The offending value as the reader typed it, never a secret."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return value.strip()  # a number given as text (flag, environment): shown as one
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    if _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str) and "://" in value:
        return repr(mask_url_password(value))
    if isinstance(value, str | int | float | bool) or value is None:
        return repr(value)
    return json.dumps(value, default=str)[:80]


def describe_error(err: Any, *, file_keys: bool = False) -> str:
    """`key: problem` for one pydantic error, naming the value and the valid choices."""
    loc = tuple(err["loc"])
    key = error_key(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    backend = str(loc[1]) if len(loc) > 1 and loc[0] == "accounts" else None
    if kind == "extra_forbidden":
        return unknown_key(key, backend)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag_key = f"{key}.{str(ctx.get('discriminator', 'backend')).strip(chr(39))}"
        choices = _QUOTED.findall(str(ctx.get("expected_tags", ""))) or list(_BACKENDS)
        listed = ", ".join(choices)
        if kind == "union_tag_not_found":
            return f"{tag_key}: missing; choose one of {listed}"
        tag = str(ctx.get("tag", ""))
        return f"{tag_key}: {tag!r} is not one of {listed}{_hint(tag, choices)}"
    if kind == "literal_error":
        choices = _QUOTED.findall(str(ctx.get("expected", "")))
        return f"{key}: {_shown(key, value)} is not one of {', '.join(choices)}" + _hint(
            str(value), choices
        )
    if kind == "missing":
        where = f" for the {backend} account backend" if backend in _BACKENDS else ""
        return f"{key}: missing (required{where})"
    if kind in _LIMITS:
        bound, text = _LIMITS[kind]
        return f"{key}: {_shown(key, value)} {text.format(ctx.get(bound))}"
    if kind in _TYPES:
        return f"{key}: {_shown(key, value)} {_TYPES[kind]}"
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return f"{key}: must not be empty" if least == 1 else f"{key}: needs {least}+ characters"
    if kind == "string_too_long":
        return f"{key}: {ctx.get('max_length')} characters at most"
    if kind == "string_pattern_mismatch":
        return f"{key}: {_shown(key, value)} does not match {ctx.get('pattern')}"
    message = str(err["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")
    if file_keys:
        # Cross-field checks name flags; in a file the keys are what the reader looks for.
        message = _FLAG.sub(
            lambda m: k if (k := m[1].replace("-", "_")) in ServeSettings.model_fields else m[0],
            message,
        )
    if kind != "value_error" and value is not None and _shown(key, value) not in message:
        message = f"{_shown(key, value)}: should be {message}"
    return f"{key}: {message}" if key else message


def explain(exc: ValidationError, config_file: Path | None = None) -> list[str]:
    """One line per problem of a settings ValidationError, in the user's words.

    Unknown keys can only come from the config file, so they are prefixed with its path.
    """
    lines = []
    for err in exc.errors():
        line = describe_error(err)
        if err["type"] == "extra_forbidden" and config_file is not None:
            line = f"{config_file}: {line}"
        lines.append(line)
    return lines


def field_panel(name: str) -> str:
    """The help panel key of a settings field (ValueError when it names none or no known one)."""
    extra = ServeSettings.model_fields[name].json_schema_extra
    panel = extra.get("panel") if isinstance(extra, dict) else None
    if panel not in PANELS:
        raise ValueError(f"setting {name} has no help panel: add json_schema_extra=PANEL_...")
    return str(panel)


def default_text(name: str) -> str:
    """A field's default as the docs show it (Markdown)."""
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
        "Precedence: config file < environment < command line. A list option is repeated on",
        "the command line (`--allow 10.0.0.0/8 --allow 192.168.0.0/16`); in the environment",
        "its values are comma- or space-separated (`KMSGATE_LISTEN=127.0.0.1:1688,[::1]:1688`),",
        "product patterns comma-separated only, as names hold spaces. The sections are the",
        "panels of `kmsgate serve --help` and of the kmsgate(1) man page.",
    ]
    by_panel: dict[str, list[str]] = {key: [] for key in PANELS}
    for name in ServeSettings.model_fields:
        by_panel[field_panel(name)].append(name)
    for key, names in by_panel.items():
        if not names:
            continue
        lines += [
            "",
            f"## {PANELS[key]}",
            "",
            "| flag | environment | file key | default | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name in names:
            field = ServeSettings.model_fields[name]
            flag = "--" + name.replace("_", "-")
            if field.annotation is bool and not name.startswith("no_"):
                flag = f"{flag} / --no-{name.replace('_', '-')}"
            lines.append(
                f"| `{flag}` | `KMSGATE_{name.upper()}` | `{name}` | {default_text(name)} "
                f"| {field.description} |"
            )
    return "\n".join(lines) + "\n"
