"""The activation log record: one compact line per request, and its structured fields."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Final, Literal, TypedDict

from kmsgate.catalog import Catalog
from kmsgate.net import Peer
from kmsgate.protocol.engine import unix_from_filetime
from kmsgate.protocol.events import ActivationRefused, ActivationServed
from kmsgate.protocol.hresult import describe
from kmsgate.protocol.licensing import license_status_name
from kmsgate.protocol.messages import KmsRequest

activation_log: Final = logging.getLogger("kmsgate.activation")


class ActivationFields(TypedDict):
    """Structured data of one activation record, attached to it as `record.kms`."""

    address: str
    port: int | None
    machine_name: str | None
    product: str | None
    sku_id: str | None
    kms_id: str | None
    cmid: str | None
    license_status: str | None
    protocol: str | None
    result: Literal["activated", "refused"]
    hresult: str
    epid: str | None
    client_count: int | None
    reason: str | None
    node: str | None


def printable(text: str) -> str:
    """Replace control and separator characters: a client-chosen name must not forge lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


# Per catalogue and (SKU id, KMS id): the product name and both ids as text, built once. A
# fleet sends a few dozen pairs; client-chosen ids empty the cache before it grows too big.
_ProductText = tuple[str, str, str]
# Keyed by the ids' integers: a UUID's __hash__ runs interpreted.
_PRODUCT_TEXT: dict[tuple[Catalog, int, int], _ProductText] = {}
_CACHE_LIMIT = 4096


def _product_text(catalog: Catalog, request: KmsRequest) -> _ProductText:
    key = (catalog, request.sku_id.int, request.kms_counted_id.int)
    text = _PRODUCT_TEXT.get(key)
    if text is None:
        if len(_PRODUCT_TEXT) >= _CACHE_LIMIT:
            _PRODUCT_TEXT.clear()
        text = _PRODUCT_TEXT[key] = (
            catalog.product_name(request.sku_id, request.kms_counted_id),
            str(request.sku_id),
            str(request.kms_counted_id),
        )
    return text


# Unix seconds of 10000-01-01T00:00:00Z: datetime holds no later date.
_DATETIME_END: Final = 253_402_300_800
_UNIX_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_DAY_TEXT: Final[dict[int, str]] = {}
_last_second: tuple[int, str] = (-1, "")


def client_time_text(filetime: int) -> str:
    """A client's FILETIME as `2024-05-01T12:00:00Z`; `filetime:N` when no date holds it.

    Clients choose any 64-bit value: 2^64-1 is the year 60056, which datetime refuses.
    """
    global _last_second
    seconds = unix_from_filetime(filetime)
    whole = int(seconds)
    # Arithmetic instead of datetime for 1970..9999, except where datetime's rounding to
    # microseconds would carry into the next second: the text stays exactly datetime's.
    if 0 <= whole < _DATETIME_END and (seconds - whole) * 1e6 < 999_999.0:
        # A busy host's clients mostly send the same second as the last one: its text is
        # kept (formatting it again costs ten times the look-up).
        last = _last_second
        if last[0] == whole:
            return last[1]
        day, second = divmod(whole, 86_400)
        day_text = _DAY_TEXT.get(day)
        if day_text is None:
            if len(_DAY_TEXT) >= _CACHE_LIMIT:
                _DAY_TEXT.clear()
            day_text = _DAY_TEXT[day] = date.fromordinal(_UNIX_EPOCH_ORDINAL + day).isoformat()
        hour, second = divmod(second, 3600)
        minute, second = divmod(second, 60)
        text = f"{day_text}T{hour:02d}:{minute:02d}:{second:02d}Z"
        _last_second = (whole, text)  # one tuple: a thread never sees half of it
        return text
    try:
        when = datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return f"filetime:{filetime}"
    return f"{when:%Y-%m-%dT%H:%M:%SZ}"


def _line(
    peer: Peer, event: ActivationServed | ActivationRefused, product: _ProductText | None
) -> str:
    request = event.request
    if request is None or product is None:
        assert isinstance(event, ActivationRefused)  # only a refusal lacks a decoded request
        return f"{peer} - refused {describe(event.hresult)}: {printable(event.reason)}"
    name = printable(request.machine_name.replace('"', "'")) or "-"
    text = (
        f'{peer} {name} "{product[0]}" {license_status_name(request.license_status)} '
        f"v{request.major_version}.{request.minor_version}"
    )
    if isinstance(event, ActivationServed):
        return (
            f"{text} activated count={event.response.current_client_count} "
            f"client-time={client_time_text(request.request_time)}"
        )
    return f"{text} refused {describe(event.hresult)}: {printable(event.reason)}"


def _fields(
    peer: Peer,
    event: ActivationServed | ActivationRefused,
    product: _ProductText | None,
    node: str | None,
) -> ActivationFields:
    fields: ActivationFields = {
        "address": peer.address,
        "port": peer.port,
        "machine_name": None,
        "product": None,
        "sku_id": None,
        "kms_id": None,
        "cmid": None,
        "license_status": None,
        "protocol": None,
        "result": "activated",
        "hresult": "0x00000000",
        "epid": None,
        "client_count": None,
        "reason": None,
        "node": node,
    }
    request = event.request
    if request is not None and product is not None:
        fields["machine_name"] = request.machine_name
        fields["product"], fields["sku_id"], fields["kms_id"] = product
        fields["cmid"] = str(request.client_machine_id)
        fields["license_status"] = license_status_name(request.license_status)
        fields["protocol"] = f"{request.major_version}.{request.minor_version}"
    if isinstance(event, ActivationServed):
        fields["epid"] = event.response.epid
        fields["client_count"] = event.response.current_client_count
    else:
        fields["result"] = "refused"
        fields["hresult"] = f"0x{event.hresult:08X}"
        fields["reason"] = event.reason
    return fields


def _product_of(
    event: ActivationServed | ActivationRefused, catalog: Catalog
) -> _ProductText | None:
    return None if event.request is None else _product_text(catalog, event.request)


def activation_line(
    peer: Peer, event: ActivationServed | ActivationRefused, catalog: Catalog
) -> str:
    """`client machine "product" status vN.M result`: one compact line per request."""
    return _line(peer, event, _product_of(event, catalog))


def activation_fields(
    peer: Peer,
    event: ActivationServed | ActivationRefused,
    catalog: Catalog,
    node: str | None = None,
) -> ActivationFields:
    """The structured fields of one activation record (see ActivationFields)."""
    return _fields(peer, event, _product_of(event, catalog), node)


def log_activation(
    peer: Peer,
    event: ActivationServed | ActivationRefused,
    catalog: Catalog,
    node: str | None = None,
) -> None:
    """Log one request: INFO if served, WARNING if refused; records carry `kms` fields.

    When the set-up's text handler on stderr is all that listens, the line is written
    without a record (KmsStreamHandler.write_activation): the same bytes, no fields built.
    """
    level = logging.INFO if isinstance(event, ActivationServed) else logging.WARNING
    # Skip building the line and fields when nobody listens (the hot path at high rates).
    if not activation_log.isEnabledFor(level):
        return
    product = _product_of(event, catalog)
    line = _line(peer, event, product)
    # The usual set-up (one text handler on stderr, nothing else listening) takes the line
    # directly: the same bytes, without a LogRecord nobody would look at.
    handler = _sole_handler()
    if handler is not None:
        write = getattr(handler, "write_activation", None)
        if write is not None and write(level, activation_log.name, line):
            return
    # Logger.log's own path minus findCaller's stack walk: the record names this function
    # as its origin. The line is the message itself, never %-formatted again.
    record = activation_log.makeRecord(
        activation_log.name,
        level,
        _ORIGIN_FILE,
        _ORIGIN_LINE,
        line,
        (),
        None,
        _ORIGIN_FUNCTION,
        {"kms": _fields(peer, event, product, node)},
    )
    activation_log.handle(record)


def _sole_handler() -> logging.Handler | None:
    """The one handler an activation record would reach, if exactly one; else None.

    As Logger.handle and callHandlers go: the logger's own filters, then every handler up
    the hierarchy until a logger that does not propagate.
    """
    if activation_log.disabled or activation_log.filters:
        return None
    found = None
    logger: logging.Logger | None = activation_log
    while logger is not None:
        for handler in logger.handlers:
            if found is not None:
                return None
            found = handler
        logger = logger.parent if logger.propagate else None
    return found


# Compiled (mypyc), a function has no code object and the module's file is its build:
# records then name the source file, line 0.
_ORIGIN_CODE: Final = getattr(log_activation, "__code__", None)
_ORIGIN_FILE: Final = str(Path(__file__).with_name("activation_log.py"))
_ORIGIN_LINE: Final = 0 if _ORIGIN_CODE is None else _ORIGIN_CODE.co_firstlineno
_ORIGIN_FUNCTION: Final = "log_activation"
