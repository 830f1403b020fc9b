"""Log setup: text, JSON or mininfo, to stderr or a rotating file, secrets masked.

Formats:
- text: `2024-05-01 12:00:00.123Z INFO kmsgate.server: message`, tracebacks on following lines.
- json: one JSON object per line: ts (ISO-8601 UTC), level, logger, msg, and for activation
  records the fields of `ActivationFields` at the top level; `exc` holds any traceback.
- mininfo: one line per served activation, `time | address | machine name | product |
  license status`. Other INFO/DEBUG records are suppressed; warnings and errors (refused
  requests included) still appear, as `time | LEVEL | logger | message` on one line, so
  failures are never silent and the level column (never an address) tells them apart.

Every handler masks secrets (passwords, tokens, URL credentials) before formatting. The
activation records themselves are built in kmsgate.observability.activation_log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Final, Literal, TextIO

from kmsgate.observability.activation_log import printable
from kmsgate.observability.masking import SecretMaskingFilter

LogFormat = Literal["text", "json", "mininfo"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json", "mininfo")
DEFAULT_MAX_BYTES: Final = 10_485_760
DEFAULT_BACKUPS: Final = 5
_HANDLER_NAME: Final = "kmsgate"
# Activation lines held for one loop turn at most; a turn that serves more writes sooner.
MAX_HELD_LINES: Final = 256
# A line's milliseconds as the text formatter writes them, by value.
_MILLIS: Final = tuple(f"{millis:03d}" for millis in range(1000))
_MAX_MIDDLES: Final = 64
# What handleError reports when held activation lines could not be written.
_LOST_LINES = logging.makeLogRecord({"msg": "activation lines lost: the log stream failed"})


# --- formatters --------------------------------------------------------------------------


def _iso_utc(record: logging.LogRecord) -> str:
    """The record's time as ISO-8601 UTC with milliseconds: 2024-05-01T12:00:00.123Z."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


def _text_formatter() -> logging.Formatter:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    formatter.converter = time.gmtime
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


class KmsStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes activation lines in the text format without a LogRecord.

    write_activation() writes exactly what handle() would for an activation record, as long
    as the handler keeps the filters and formatter setup_logging gave it (each lets such a
    record through unchanged); otherwise it declines and the caller logs a record. Inside an
    event loop the lines of one loop turn leave in one write (one system call, not one per
    activation); every other record, flush() and close() write the held lines first.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._sealed: tuple[list[Any], logging.Formatter] | None = None
        self._second: tuple[int, str] = (-1, "")  # one tuple: threads never see half of it
        self._held: list[str] = []  # activation lines waiting for the end of the loop turn
        # "Z LEVEL logger: " per (level, logger name): a host logs with one or two.
        self._middles: dict[tuple[int, str], str] = {}

    def seal(self) -> None:
        """Note the filters and the text formatter as set up: the direct path needs them."""
        self._sealed = (list(self.filters), self.formatter) if self.formatter else None

    def write_activation(self, levelno: int, name: str, line: str) -> bool:
        """Write one activation line (`line` is its message); False when this cannot."""
        sealed = self._sealed
        if (
            sealed is None
            or levelno < self.level
            or self.formatter is not sealed[1]
            or self.filters != sealed[0]
        ):
            return False
        # The text formatter's asctime: UTC to the second (cached), then milliseconds as
        # LogRecord.msecs truncates them; then the level and logger, made once per pair.
        now = time.time()
        second, second_text = self._second
        if int(now) != second:
            second = int(now)
            second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
            self._second = (second, second_text)
        middle = self._middles.get((levelno, name))
        if middle is None:
            middle = f"Z {logging.getLevelName(levelno)} {name}: "
            if len(self._middles) < _MAX_MIDDLES:
                self._middles[(levelno, name)] = middle
        text = f"{second_text}.{_MILLIS[int((now - second) * 1000)]}{middle}{line}{self.terminator}"
        # The handler's lock itself: Handler.acquire and release are two more Python calls.
        lock = self.lock
        assert lock is not None  # Handler.__init__ created it
        with lock:
            held = self._held
            held.append(text)
            if len(held) == 1:
                try:
                    asyncio.get_running_loop().call_soon(self.write_held)
                except RuntimeError:  # no loop in this thread: nothing would come back
                    return self._write_held()
            elif len(held) >= MAX_HELD_LINES:
                self.write_held()
        return True

    def write_held(self) -> None:
        """Write the activation lines held so far, in one write."""
        self.acquire()
        try:
            if not self._write_held():
                self.handleError(_LOST_LINES)
        finally:
            self.release()

    def _write_held(self) -> bool:
        """Write and forget the held lines; False when the stream refused them (lost)."""
        held = self._held
        if not held:
            return True
        text = held[0] if len(held) == 1 else "".join(held)
        held.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            return False
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if self._held:
            self.write_held()  # lines keep their order with the records around them
        super().emit(record)

    def flush(self) -> None:
        if self._held:
            self.write_held()
        super().flush()

    def close(self) -> None:
        if self._held:
            self.write_held()
        super().close()


class JsonFormatter(logging.Formatter):
    """One JSON object per line; activation records add their ActivationFields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": _iso_utc(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "kms", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        # ASCII escapes keep U+2028 and friends from splitting a line in any reader.
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":"), default=str)


def _cell(value: object) -> str:
    """A mininfo column: printable, without the column separator."""
    text = "-" if value is None or value == "" else str(value)
    return printable(text).replace("|", "/")


class MininfoFormatter(logging.Formatter):
    """`time | address | machine name | product | license status` per served activation."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "kms", None)
        if isinstance(fields, dict) and fields.get("result") == "activated":
            return " | ".join(
                (
                    _iso_utc(record),
                    _cell(fields.get("address")),
                    _cell(fields.get("machine_name")),
                    _cell(fields.get("product")),
                    _cell(fields.get("license_status")),
                )
            )
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            # One line per record: only the exception's own line, not the traceback.
            message = f"{message}: {record.exc_text.rstrip().splitlines()[-1]}"
        return " | ".join((_iso_utc(record), record.levelname, record.name, _cell(message)))


class MininfoFilter(logging.Filter):
    """Passes served activations, and other records at or above `threshold`."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.threshold:
            return True
        fields = getattr(record, "kms", None)
        return isinstance(fields, dict) and fields.get("result") == "activated"


# --- setup -------------------------------------------------------------------------------

_QUIET_LIBRARIES: Final = ("alembic", "uvicorn")
# uvicorn logs its server's own messages (bind failures included) as "uvicorn.error".
_LIBRARY_LOGGER_NAMES: Final = {"uvicorn.error": "kmsgate.web", "uvicorn": "kmsgate.web"}


class _RenameLibraryLoggers(logging.Filter):
    """Shows uvicorn's server messages as kmsgate.web: they are about our web listener."""

    def filter(self, record: logging.LogRecord) -> bool:
        renamed = _LIBRARY_LOGGER_NAMES.get(record.name)
        if renamed is not None:
            record.name = renamed
        return True


class _OwnLinesBelowWarning(logging.Filter):
    """Below WARNING, only kmsgate's own records pass (other libraries' INFO is routine)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith("kmsgate")


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def setup_logging(
    level: str,
    *,
    fmt: LogFormat = "text",
    file: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
) -> None:
    """Send all logs to stderr, or to `file` rotated at max_bytes keeping `backups` old files.

    Idempotent: replaces the root logger's handlers (closing those it made before). With
    backups=0 the file is truncated at max_bytes; max_bytes=0 never rotates.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")
    if max_bytes < 0 or backups < 0:
        raise ValueError("log max bytes and backups must not be negative")
    number = _level_number(level)
    handler: logging.Handler
    if file is None:
        handler = KmsStreamHandler(sys.stderr)
    else:
        # Only --log-file needs the handlers module (and the pickle and socket modules it loads).
        from logging.handlers import RotatingFileHandler

        handler = RotatingFileHandler(
            file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    handler.addFilter(SecretMaskingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "mininfo":
        handler.addFilter(MininfoFilter(max(number, logging.WARNING)))
        handler.setFormatter(MininfoFormatter())
        # Activations are INFO records; mininfo shows them whatever the chosen level.
        number = min(number, logging.INFO)
    else:
        handler.setFormatter(_text_formatter())
    handler.addFilter(_RenameLibraryLoggers())
    handler.set_name(_HANDLER_NAME)
    # Alembic's plugin and context lines and uvicorn's banners are routine, not the admin's
    # business at INFO: only their warnings and errors show, unless the level is debug.
    verbose = _level_number(level) <= logging.DEBUG
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    if not verbose:
        handler.addFilter(_OwnLinesBelowWarning())
    if isinstance(handler, KmsStreamHandler) and fmt == "text":
        handler.seal()  # every filter above lets an activation record through unchanged
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        # Only our own handlers are closed: others (pytest's, say) belong to their owners.
        if old.get_name() == _HANDLER_NAME:
            old.close()
    root.addHandler(handler)
    root.setLevel(number)
