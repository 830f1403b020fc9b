"""The --db value: file paths and sqlite:// or postgresql:// URLs, made absolute."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

_URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_DB_SCHEME_NO_SLASHES = re.compile(r"^(sqlite|postgres|postgresql)(\+\w+)?:(?!//)", re.I)
DB_FORMS = "a file path, sqlite:////ABSOLUTE/PATH or postgresql://USER@HOST[:PORT]/DB"


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


def is_relative_db(text: str) -> bool:
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
        if is_relative_db(text):
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
