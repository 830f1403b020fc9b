"""`kmsgate config`: show the effective settings with their sources, check a TOML file."""

from __future__ import annotations

import inspect
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from kmsgate.cli.help import SettingsHelpCommand
from kmsgate.cli.serve import settings_parameters
from kmsgate.config.explain import describe_error, error_key, explain, unknown_key
from kmsgate.config.loading import effective_config_file, load_settings
from kmsgate.config.settings import ServeSettings

Source = Literal["default", "file", "env", "cli"]

MASK = "***"
ENV_PREFIX = "KMSGATE_"
# Names whose values are secrets wherever they appear (nested account settings included).
_SECRET_NAME = re.compile(r"password|passwd|secret|token", re.IGNORECASE)
# scheme://user:password@rest — the password runs to the last '@', so none of it can leak.
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^:@/?#]*):(?P<pw>.*)@(?P<rest>[^@]*)$")
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|secret)=)[^&#]*", re.IGNORECASE)
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_KEY_LINE = re.compile(r'^\s*(?P<key>[A-Za-z0-9_.-]+|"[^"]*")\s*=')
_TABLE_LINE = re.compile(r"^\s*\[(?P<name>[A-Za-z0-9_.-]+)\]\s*(#.*)?$")


# ---------------------------------------------------------------- masking


def mask_url(text: str) -> str:
    """`text` with any password in a URL's user info or query replaced by ***."""
    match = _URL_PASSWORD.match(text)
    if match:
        text = f"{match['head']}:{MASK}@{match['rest']}"
    return _QUERY_SECRET.sub(lambda m: m["key"] + MASK, text) if "://" in text else text


def masked_value(value: Any, name: str = "") -> Any:
    """A JSON-ready copy of a settings value with secrets and URL passwords masked."""
    if value is None:
        return None
    # A number is never a secret, whatever its name says (min_password_length).
    secret_name = _SECRET_NAME.search(name) and not isinstance(value, int | float)
    if isinstance(value, SecretStr) or (secret_name and value != ""):
        return MASK
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, dict):
        return {str(key): masked_value(item, str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [masked_value(item, name) for item in value]
    if isinstance(value, bool | int | float):
        return value
    return mask_url(str(value))


def _text(value: Any) -> str:
    """One masked value as a line of text."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "(empty)"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


# ---------------------------------------------------------------- sources


def value_sources(
    file_keys: set[str], environ: Mapping[str, str], cli: Mapping[str, Any]
) -> dict[str, Source]:
    """Where each field's value comes from: cli beats env beats file beats default."""
    env_keys = {key.lower() for key in environ}
    sources: dict[str, Source] = {}
    for name in ServeSettings.model_fields:
        if cli.get(name) is not None:
            sources[name] = "cli"
        elif f"{ENV_PREFIX.lower()}{name}" in env_keys:
            sources[name] = "env"
        elif name in file_keys:
            sources[name] = "file"
        else:
            sources[name] = "default"
    return sources


def _exit_with(problems: list[str], code: int) -> typer.Exit:
    """Print each problem as `error: ...` to stderr; the Exit to raise."""
    typer.echo("\n".join(f"error: {problem}" for problem in problems), err=True)
    return typer.Exit(code)


def _load(config: Path | None, cli: dict[str, Any]) -> ServeSettings:
    """Settings exactly as `serve` resolves them; one line per problem and status 2 if bad."""
    try:
        return load_settings(config, **cli)
    except ValidationError as exc:
        raise _exit_with(explain(exc, effective_config_file(config)), 2) from None
    except tomllib.TOMLDecodeError as exc:
        raise _exit_with(
            [f"{effective_config_file(config)}: TOML syntax error: {exc}"], 2
        ) from None
    except (FileNotFoundError, ValueError) as exc:
        raise _exit_with([str(exc)], 2) from None


def show_settings(config: Path | None, cli: dict[str, Any]) -> dict[str, Any]:
    """The effective settings as {config_file, settings: {name: {value, source}}}, masked."""
    given = {key: value for key, value in cli.items() if value is not None}
    settings = _load(config, given)
    path = effective_config_file(config)
    file_keys = set(tomllib.loads(path.read_text(encoding="utf-8"))) if path else set()
    sources = value_sources(file_keys, os.environ, given)
    return {
        "config_file": str(path) if path else None,
        "settings": {
            name: {"value": masked_value(getattr(settings, name), name), "source": sources[name]}
            for name in ServeSettings.model_fields
        },
        "warnings": settings.warnings(),
    }


# ---------------------------------------------------------------- file check


class _FileOnlySettings(ServeSettings):
    """The settings model fed only what it is given: no KMSGATE_* variables, no default file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _key_lines(text: str) -> dict[str, int]:
    """First line of each key (`key`, `table`, `table.key`) in a TOML text, for messages."""
    lines: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        if header := _TABLE_LINE.match(line):
            table = header["name"]
            lines.setdefault(table, number)
        elif key := _KEY_LINE.match(line):
            name = key["key"].strip('"').replace(" ", "")
            lines.setdefault(f"{table}.{name}" if table else name, number)
    return lines


def check_text(text: str, where: str) -> list[str]:
    """Problems of one TOML config text, each `where[:line]: key: problem`; empty when fine."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        if position := _TOML_POSITION.search(msg):
            line, column = position.groups()
            return [f"{where}:{line}:{column}: TOML syntax error: {msg[: position.start()]}"]
        return [f"{where}: TOML syntax error: {msg}"]
    lines = _key_lines(text)

    def at(key: str) -> str:
        root = re.split(r"[.\[]", key, maxsplit=1)[0]
        line = lines.get(key) or lines.get(root)
        return f"{where}:{line}" if line else where

    problems = [
        f"{at(key)}: {unknown_key(key)}" for key in data if key not in ServeSettings.model_fields
    ]
    known = {key: value for key, value in data.items() if key in ServeSettings.model_fields}
    try:
        _FileOnlySettings(**known)
    except ValidationError as exc:
        for err in exc.errors():
            key = error_key(tuple(err["loc"]))
            problems.append(f"{at(key) if key else where}: {describe_error(err, file_keys=True)}")
    return sorted(problems, key=_line_of)


def _line_of(problem: str) -> int:
    """The line number in `where:line: ...` (0 without one), to list problems in file order."""
    match = re.match(r"[^:]*:(\d+)", problem)
    return int(match[1]) if match else 0


def check_file(path: Path) -> list[str]:
    """Problems of a TOML config file (unreadable, syntax, unknown keys, bad values)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror or exc}"]
    except UnicodeDecodeError as exc:
        return [f"{path}: not UTF-8 text (byte {exc.start})"]
    return check_text(text, str(path))


# ---------------------------------------------------------------- commands


app = typer.Typer(
    name="config", help="Show the effective settings or check a config file.", no_args_is_help=True
)


def show(**options: Any) -> None:
    """Print every serve setting, where it came from (default/file/env/cli), secrets masked."""
    config = options.pop("config")
    as_json = options.pop("json_output")
    cli = {
        key: (value or None) if isinstance(value, list) else value for key, value in options.items()
    }
    report = show_settings(config, cli)
    for warning in report["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    rows = [
        (name, item["source"], _text(item["value"])) for name, item in report["settings"].items()
    ]
    width = max(len(name) for name, _, _ in rows)
    typer.echo(f"# config file: {report['config_file'] or 'none'}")
    for name, source, value in rows:
        typer.echo(f"{name:<{width}}  {source:<7}  {value}")


json_param = inspect.Parameter(
    "json_output",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[bool, typer.Option("--json", help="machine-readable output")],
)
show.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [*settings_parameters(ServeSettings), json_param]
)
app.command(cls=SettingsHelpCommand)(show)


@app.command()
def check(
    file: Annotated[Path, typer.Argument(help="TOML config file to validate")],
) -> None:
    """Validate a TOML config file on its own (no environment): syntax, keys, values."""
    problems = check_file(file)
    if problems:
        raise _exit_with(problems, 1)
    settings = _FileOnlySettings(**tomllib.loads(file.read_text(encoding="utf-8")))
    for warning in settings.warnings():
        typer.echo(f"warning: {file}: {warning}", err=True)
    typer.echo(f"{file}: ok")
