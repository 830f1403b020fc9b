"""Settings validation errors in the user's words: `key: problem`, with the likely fix."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from kmsgate.access.accounts.base import LdapSettings, LocalSettings, Pop3Settings, SqlSettings
from kmsgate.config.db_url import mask_url_password
from kmsgate.config.settings import ServeSettings

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
