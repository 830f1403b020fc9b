"""Loading the settings: TOML file < KMSGATE_* environment < command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_settings import SettingsConfigDict

from kmsgate.config.settings import ServeSettings

DEFAULT_CONFIG_FILE = Path("/etc/kmsgate/kmsgate.toml")


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
