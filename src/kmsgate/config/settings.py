"""ServeSettings: the options checked alone and together, derived values, and sources."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from pydantic import ModelWrapValidatorHandler, PrivateAttr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

from kmsgate.access.products import ProductPattern
from kmsgate.access.source import parse_network
from kmsgate.config.addresses import parse_listen, parse_public_address
from kmsgate.config.db_url import absolute_db_url, is_relative_db, sqlite_path
from kmsgate.config.options import ServeOptions
from kmsgate.protocol.epid import VALID_LCIDS, parse_epid_option, parse_hwid


class ServeSettings(ServeOptions):
    """Everything `kmsgate serve` can be told; names match flags, env vars and file keys."""

    _db_note: str | None = PrivateAttr(None)

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
    def _noteis_relative_db(
        cls, data: Any, handler: ModelWrapValidatorHandler[ServeSettings]
    ) -> ServeSettings:
        settings = handler(data)
        raw = data.get("db") if isinstance(data, dict) else None
        if isinstance(raw, str) and settings.db is not None and is_relative_db(raw):
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
                    written = ipaddress.ip_network(item.strip(), strict=True)
                except ValueError:
                    network = parse_network(item)
                    found.append(f"{name}: {item} has host bits set; using the network {network}")
                    continue
                network = parse_network(item)
                if network != written:
                    found.append(f"{name}: {item} is IPv4-mapped; using the IPv4 network {network}")
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
