"""Log formats (text, json, mininfo), rotation, secret masking and the activation record."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmsgate.catalog import Catalog, default_catalog
from kmsgate.net import Peer
from kmsgate.observability import activation_log as activation_log_module
from kmsgate.observability.activation_log import (
    activation_fields,
    activation_line,
    activation_log,
    client_time_text,
    log_activation,
)
from kmsgate.observability.logs import (
    MAX_HELD_LINES,
    JsonFormatter,
    KmsStreamHandler,
    LogFormat,
    MininfoFormatter,
    setup_logging,
)
from kmsgate.observability.masking import mask_secrets
from kmsgate.protocol.licensing import license_status_name
from tests.observability import CMID, EPID, make_request, refused, served

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PRODUCT = "Windows Server 2019 Datacenter"
other_log = logging.getLogger("kmsgate.server")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return default_catalog()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root logger back as pytest set it up, closing what setup_logging opened."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(path: Path) -> list[str]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return path.read_text(encoding="utf-8").splitlines()


# --- the activation record ---------------------------------------------------------------


def test_activation_line_keeps_its_format(catalog: Catalog) -> None:
    line = activation_line(Peer("10.1.2.3", 49152), served(), catalog)
    assert line == (
        f'10.1.2.3:49152 DESKTOP-42.corp.example "{PRODUCT}" oob-grace v6.0 activated '
        "count=10 client-time=2024-01-02T03:04:05Z"
    )
    assert activation_line(Peer("10.1.2.3", 1), refused(make_request(version=4)), catalog).endswith(
        f'"{PRODUCT}" oob-grace v4.0 refused 0xC004F042 '
        "(the KMS host cannot activate this product): product not allowed"
    )
    assert activation_line(
        Peer("10.1.2.3", 1), refused(None, hresult=0x8007000D, reason="x"), catalog
    ) == (
        "10.1.2.3:1 - refused 0x8007000D (the data is invalid (malformed request or unsupported "
        "version)): x"
    )
    assert license_status_name(1) == "licensed"
    assert license_status_name(42) == "status-42"
    assert license_status_name(None) is None  # the API's rows without a status


def test_client_chosen_names_cannot_forge_log_lines(catalog: Catalog) -> None:
    event = served(make_request(name='evil\n2024-01-01 fake "line"\u2028x'))
    line = activation_line(Peer("10.1.2.3", 1), event, catalog)
    assert len(line.splitlines()) == 1
    assert "evil?2024-01-01 fake 'line'?x" in line


@given(
    request_time=st.integers(0, 2**64 - 1),
    license_status=st.integers(0, 2**32 - 1),
    name=st.text(max_size=63),
)
def test_every_field_value_makes_one_line_and_fields(
    request_time: int, license_status: int, name: str
) -> None:
    """Issue 11 H1: request_time 2^64-1 (the year 60056) raised after the answer was sent."""
    request = dataclasses.replace(
        make_request(name=name, license_status=license_status), request_time=request_time
    )
    for event in (served(request), refused(request)):
        line = activation_line(Peer("10.1.2.3", 1), event, default_catalog())
        assert len(line.splitlines()) == 1
        fields = activation_fields(Peer("10.1.2.3", 1), event, default_catalog())
        assert fields["license_status"] == license_status_name(license_status)
        json.loads(JsonFormatter().format(_record_with(fields, line)))


def _record_with(fields: object, line: str) -> logging.LogRecord:
    record = logging.LogRecord("kmsgate.activation", logging.INFO, "", 0, line, None, None)
    record.kms = fields
    return record


@pytest.mark.parametrize(
    ("filetime", "text"),
    [
        (0, "1601-01-01T00:00:00Z"),
        (116444736000000000, "1970-01-01T00:00:00Z"),
        (2650467743990000000, "9999-12-31T23:59:59Z"),
        (2650467744000000000, "filetime:2650467744000000000"),
        (2**64 - 1, "filetime:18446744073709551615"),
    ],
)
def test_client_time_shows_what_no_date_holds_as_a_tick_count(filetime: int, text: str) -> None:
    assert client_time_text(filetime) == text
    line = activation_line(
        Peer("10.1.2.3", 1),
        served(dataclasses.replace(make_request(), request_time=filetime)),
        default_catalog(),
    )
    assert line.endswith(f"client-time={text}")


def _datetime_text(filetime: int) -> str:
    """The client time as datetime spells it: what client_time_text must always equal."""
    try:
        when = datetime.fromtimestamp(filetime / 10_000_000 - 11_644_473_600, UTC)
    except (ValueError, OverflowError, OSError):
        return f"filetime:{filetime}"
    return f"{when:%Y-%m-%dT%H:%M:%SZ}"


@given(
    st.one_of(
        st.integers(0, 2**64 - 1),
        # Ticks at and just below a whole second: some round into the next second.
        st.builds(
            lambda second, ticks: second * 10_000_000 + ticks,
            st.integers(11_644_473_600, 265_046_774_400),
            st.sampled_from([0, 1, 9_999_990, 9_999_994, 9_999_995, 9_999_999]),
        ),
    )
)
def test_client_time_text_always_equals_what_datetime_prints(filetime: int) -> None:
    assert client_time_text(filetime) == _datetime_text(filetime)


@given(
    st.integers(11_644_473_600, 265_046_774_399),
    st.lists(
        st.one_of(st.integers(0, 9_999_999), st.sampled_from([0, 9_999_995, 9_999_999])),
        min_size=2,
        max_size=6,
    ),
)
def test_the_last_second_kept_is_only_reused_for_the_same_text(
    second: int, ticks: list[int]
) -> None:
    # Times within one second, some of them rounding into the next: whatever came before,
    # each gets datetime's own text.
    for tick in ticks:
        filetime = second * 10_000_000 + tick
        assert client_time_text(filetime) == _datetime_text(filetime)


@pytest.mark.parametrize(
    ("name", "text", "address", "port"),
    [
        (("10.1.2.3", 49152), "10.1.2.3:49152", "10.1.2.3", 49152),
        (("::ffff:10.1.2.3", 49152, 0, 0), "10.1.2.3:49152", "10.1.2.3", 49152),
        (("2001:db8::1", 1688, 0, 0), "[2001:db8::1]:1688", "2001:db8::1", 1688),
        (None, "unknown", "unknown", None),
    ],
)
def test_the_socket_peer_reaches_line_and_fields_unparsed(
    catalog: Catalog, name: object, text: str, address: str, port: int | None
) -> None:
    peer = Peer.from_socket_name(name)
    assert activation_line(peer, served(), catalog).startswith(f"{text} DESKTOP-42")
    fields = activation_fields(peer, served(), catalog)
    assert (fields["address"], fields["port"]) == (address, port)


def test_activation_fields(catalog: Catalog) -> None:
    fields = activation_fields(Peer("2001:db8::1", 1688), served(), catalog, "node-a")
    assert fields == {
        "address": "2001:db8::1",
        "port": 1688,
        "machine_name": "DESKTOP-42.corp.example",
        "product": PRODUCT,
        "sku_id": "34e1ae55-27f8-4950-8877-7a03be5fb181",
        "kms_id": "8449b1fb-f0ea-497a-99ab-66ca96e9a0f5",
        "cmid": str(CMID),
        "license_status": "oob-grace",
        "protocol": "6.0",
        "result": "activated",
        "hresult": "0x00000000",
        "epid": EPID,
        "client_count": 10,
        "reason": None,
        "node": "node-a",
    }
    bad = activation_fields(
        Peer("1.2.3.4", 5), refused(None, hresult=0x8007000D, reason="short"), catalog
    )
    assert bad["result"] == "refused" and bad["hresult"] == "0x8007000D"
    assert bad["reason"] == "short" and bad["machine_name"] is None and bad["epid"] is None


def test_log_activation_attaches_structured_fields(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kmsgate.activation")
    log_activation(Peer("10.1.2.3", 49152), served(), catalog, "node-a")
    log_activation(Peer("10.1.2.3", 49152), refused(make_request()), catalog)
    ok, bad = caplog.records
    assert (ok.levelno, bad.levelno) == (logging.INFO, logging.WARNING)
    assert ok.getMessage() == activation_line(Peer("10.1.2.3", 49152), served(), catalog)
    assert ok.__dict__["kms"]["node"] == "node-a" and ok.__dict__["kms"]["epid"] == EPID
    assert bad.__dict__["kms"]["result"] == "refused"
    # Compiled or not, the record names its origin as a formatter's %(module)s reads it.
    assert (ok.module, ok.funcName) == ("activation_log", "log_activation")


def _python_calls(action: Callable[[], object]) -> set[str]:
    """Names of the Python functions `action` runs (compiled ones are invisible)."""
    seen: set[str] = set()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            seen.add(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return seen


def test_log_activation_does_no_work_when_disabled(catalog: Catalog) -> None:
    peer = Peer("10.1.2.3", 1)
    setup_logging("error")
    # Building the line reads the licence status's name (licensing.py, never compiled).
    assert "license_status_name" not in _python_calls(
        lambda: log_activation(peer, served(), catalog)
    )
    setup_logging("info")
    assert "license_status_name" in _python_calls(lambda: log_activation(peer, served(), catalog))


# --- formats -----------------------------------------------------------------------------


def test_text_format(tmp_path: Path, catalog: Catalog) -> None:
    log_file = tmp_path / "kms.log"
    setup_logging("info", file=log_file)
    log_activation(Peer("10.1.2.3", 49152), served(), catalog)
    other_log.debug("hidden")
    (line,) = lines(log_file)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z INFO kmsgate\.activation: 10\.1\.2\.3:49152 .*",
        line,
    )


def test_json_format(tmp_path: Path, catalog: Catalog) -> None:
    log_file = tmp_path / "kms.jsonl"
    setup_logging("debug", fmt="json", file=log_file)
    log_activation(Peer("10.1.2.3", 49152), served(), catalog, "node-a")
    other_log.debug("plain %s", "record")
    try:
        raise ValueError("boom")
    except ValueError:
        other_log.exception("it failed")
    docs = [json.loads(line) for line in lines(log_file)]
    assert len(docs) == 3
    activation, plain, failure = docs
    for doc in docs:
        assert ISO_UTC.match(doc["ts"])
    assert activation["level"] == "INFO" and activation["logger"] == "kmsgate.activation"
    assert activation["msg"].startswith("10.1.2.3:49152 DESKTOP-42")
    expected = activation_fields(Peer("10.1.2.3", 49152), served(), catalog, "node-a")
    assert {key: activation[key] for key in expected} == expected
    assert plain == {
        "ts": plain["ts"],
        "level": "DEBUG",
        "logger": "kmsgate.server",
        "msg": "plain record",
    }
    assert failure["level"] == "ERROR" and "ValueError: boom" in failure["exc"]


# --- the direct path for activation lines (text format on stderr) -------------------------


def _stderr_logging(
    monkeypatch: pytest.MonkeyPatch, level: str = "info", fmt: LogFormat = "text"
) -> io.StringIO:
    """setup_logging as `kmsgate serve` calls it, stderr being a StringIO."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    setup_logging(level, fmt=fmt)
    return stream


def _count_direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    results: list[bool] = []
    write = KmsStreamHandler.write_activation

    def counted(self: KmsStreamHandler, levelno: int, name: str, line: str) -> bool:
        results.append(write(self, levelno, name, line))
        return results[-1]

    monkeypatch.setattr(KmsStreamHandler, "write_activation", counted)
    return results


# 2024-01-02T03:04:05.678Z, and a time whose milliseconds round the wrong way as floats.
@pytest.mark.parametrize("now", [1704164645.678901, 1704164645.999_999_9, 1704164645.0])
def test_direct_lines_are_the_bytes_a_log_record_gives(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, now: float
) -> None:
    monkeypatch.setattr(time, "time", lambda: now)
    direct = _count_direct_writes(monkeypatch)
    events = [
        served(),
        refused(make_request(name='evil\n"name"\u2028')),
        refused(None, hresult=0x8007000D, reason="bad\r\nline"),
    ]
    stream = _stderr_logging(monkeypatch)
    for event in events:
        log_activation(Peer("2001:db8::1", 1688), event, catalog, "node-a")
    assert direct == [True, True, True]
    # A second handler anywhere on the way means a LogRecord must be built: the reference.
    reference = _stderr_logging(monkeypatch)
    other = logging.NullHandler()
    logging.getLogger("kmsgate").addHandler(other)
    try:
        for event in events:
            log_activation(Peer("2001:db8::1", 1688), event, catalog, "node-a")
    finally:
        logging.getLogger("kmsgate").removeHandler(other)
    assert direct == [True, True, True]
    assert stream.getvalue() == reference.getvalue()
    assert len(stream.getvalue().splitlines()) == 3
    assert stream.getvalue().startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)))


def test_anything_else_listening_gets_its_log_record(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    direct = _count_direct_writes(monkeypatch)
    stream = _stderr_logging(monkeypatch)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, KmsStreamHandler)
    # A filter added after set-up sees (and here drops) every activation record.
    seen: list[logging.LogRecord] = []

    def drop(record: logging.LogRecord) -> bool:
        seen.append(record)
        return False

    handler.addFilter(drop)
    log_activation(Peer("10.1.2.3", 1), served(), catalog)
    handler.removeFilter(drop)
    assert stream.getvalue() == "" and seen[0].__dict__["kms"]["result"] == "activated"
    # Another formatter: the record path formats.
    original = handler.formatter
    handler.setFormatter(logging.Formatter("%(levelname)s|%(message)s"))
    log_activation(Peer("10.1.2.3", 1), served(), catalog)
    handler.setFormatter(original)
    assert stream.getvalue().startswith("INFO|10.1.2.3:1 DESKTOP-42")
    # A level above INFO on the handler keeps served lines out, refusals in.
    handler.setLevel(logging.WARNING)
    log_activation(Peer("10.1.2.3", 2), served(), catalog)
    log_activation(Peer("10.1.2.3", 3), refused(make_request()), catalog)
    handler.setLevel(logging.NOTSET)
    assert "10.1.2.3:2" not in stream.getvalue() and "10.1.2.3:3" in stream.getvalue()
    # A capturing handler (pytest's caplog here) gets the record with its fields.
    logging.getLogger().addHandler(caplog.handler)
    log_activation(Peer("10.1.2.3", 4), served(), catalog, "node-a")
    logging.getLogger().removeHandler(caplog.handler)
    assert caplog.records[-1].__dict__["kms"]["node"] == "node-a"
    assert "10.1.2.3:4" in stream.getvalue()
    # Declined for the filter, the formatter and the level; the refusal went directly.
    assert direct == [False, False, False, True]


def test_other_formats_on_stderr_build_log_records(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = _count_direct_writes(monkeypatch)
    stream = _stderr_logging(monkeypatch, fmt="json")
    log_activation(Peer("10.1.2.3", 49152), served(), catalog, "node-a")
    doc = json.loads(stream.getvalue())
    assert doc["node"] == "node-a" and doc["msg"].startswith("10.1.2.3:49152 DESKTOP-42")
    stream = _stderr_logging(monkeypatch, fmt="mininfo")
    log_activation(Peer("10.1.2.3", 49152), served(), catalog, "node-a")
    assert " | 10.1.2.3 | DESKTOP-42.corp.example | " in stream.getvalue()
    assert direct == [False, False]


def test_a_failing_stream_falls_back_to_the_record_path(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write error is reported the way logging reports it, and never reaches the host."""

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError("stderr is gone")

    direct = _count_direct_writes(monkeypatch)
    _stderr_logging(monkeypatch)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(Broken())
    errors = io.StringIO()
    monkeypatch.setattr(sys, "stderr", errors)  # where logging reports its own errors
    log_activation(Peer("10.1.2.3", 1), served(), catalog)
    assert direct == [False]
    assert "Logging error" in errors.getvalue() and "stderr is gone" in errors.getvalue()


@given(st.text(max_size=80))
def test_json_is_always_one_line(text: str) -> None:
    record = activation_log.makeRecord("kmsgate.activation", logging.INFO, "f", 1, text, (), None)
    record.kms = {"machine_name": text}
    out = JsonFormatter().format(record)
    assert len(out.splitlines()) == 1
    assert json.loads(out)["machine_name"] == text


def test_mininfo_line_is_exact(catalog: Catalog) -> None:
    record = activation_log.makeRecord(
        "kmsgate.activation",
        logging.INFO,
        "f",
        1,
        "ignored",
        (),
        None,
        extra={"kms": activation_fields(Peer("2001:db8::1", 1688), served(), catalog)},
    )
    record.created, record.msecs = 1704164645.25, 250.0
    assert MininfoFormatter().format(record) == (
        f"2024-01-02T03:04:05.250Z | 2001:db8::1 | DESKTOP-42.corp.example | {PRODUCT} | oob-grace"
    )


def test_mininfo_cells_stay_in_their_column(catalog: Catalog) -> None:
    event = served(make_request(name="a|b\nc"))
    record = activation_log.makeRecord(
        "kmsgate.activation",
        logging.INFO,
        "f",
        1,
        "x",
        (),
        None,
        extra={"kms": activation_fields(Peer("10.0.0.1", 1), event, catalog)},
    )
    assert MininfoFormatter().format(record).split(" | ")[2] == "a/b?c"


def test_mininfo_shows_activations_and_problems_only(tmp_path: Path, catalog: Catalog) -> None:
    log_file = tmp_path / "mininfo.log"
    setup_logging("warning", fmt="mininfo", file=log_file)
    log_activation(Peer("10.1.2.3", 49152), served(), catalog)
    other_log.info("listening on 0.0.0.0:1688")
    log_activation(Peer("10.1.2.3", 49153), refused(make_request()), catalog)
    try:
        raise OSError("disk full")
    except OSError:
        other_log.exception("store write failed\nsecond line")
    out = lines(log_file)
    assert len(out) == 3
    ts = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(
        rf"{ts} \| 10\.1\.2\.3 \| DESKTOP-42\.corp\.example \| {PRODUCT} \| oob-grace", out[0]
    )
    assert re.fullmatch(
        rf"{ts} \| WARNING \| kmsgate\.activation \| 10\.1\.2\.3:49153 .* refused .*", out[1]
    )
    assert re.fullmatch(
        rf"{ts} \| ERROR \| kmsgate\.server \| store write failed\?second line: OSError: disk full",
        out[2],
    )


def test_mininfo_at_error_level_still_lists_activations(tmp_path: Path, catalog: Catalog) -> None:
    log_file = tmp_path / "mininfo.log"
    setup_logging("error", fmt="mininfo", file=log_file)
    log_activation(Peer("10.1.2.3", 49152), served(), catalog)
    log_activation(Peer("10.1.2.3", 49153), refused(make_request()), catalog)
    other_log.warning("a warning")
    assert [line.split(" | ")[1] for line in lines(log_file)] == ["10.1.2.3"]


# --- setup -------------------------------------------------------------------------------


def test_rotation_at_max_bytes_keeps_backups(tmp_path: Path) -> None:
    log_file = tmp_path / "kms.log"
    setup_logging("info", file=log_file, max_bytes=2000, backups=3)
    for number in range(400):
        other_log.info("record %04d %s", number, "x" * 40)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["kms.log", "kms.log.1", "kms.log.2", "kms.log.3"]
    assert all((tmp_path / name).stat().st_size <= 2000 for name in names)
    # The newest record is in the live file, the oldest ones were rotated away.
    assert "record 0399" in lines(log_file)[-1]
    assert "record 0000" not in "".join((tmp_path / n).read_text() for n in names)


def test_setup_is_idempotent_and_closes_its_old_handlers(tmp_path: Path) -> None:
    first = tmp_path / "first.log"
    setup_logging("info", file=first)
    (old,) = logging.getLogger().handlers
    setup_logging("info", fmt="json", file=tmp_path / "second.log")
    setup_logging("info", fmt="json", file=tmp_path / "second.log")
    root = logging.getLogger()
    assert len(root.handlers) == 1 and root.level == logging.INFO
    assert isinstance(old, logging.FileHandler) and old.stream is None
    other_log.info("after")
    assert json.loads(lines(tmp_path / "second.log")[-1])["msg"] == "after"
    assert first.read_text() == ""


def test_setup_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    other_log.info("to stderr")
    assert capsys.readouterr().err.endswith("INFO kmsgate.server: to stderr\n")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("loud",), {}), (("info",), {"fmt": "xml"}), (("info",), {"max_bytes": -1})],
)
def test_setup_rejects_bad_arguments(args: tuple[str], kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        setup_logging(*args, **kwargs)  # type: ignore[arg-type]


# --- masking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login password=hunter2 ok", "login password=*** ok"),
        ("PASSWORD: hunter2", "PASSWORD: ***"),
        ("db_password='hunter 2', next", "db_password=***, next"),
        ('{"password": "hun\\"ter2", "user": "kms"}', '{"password": ***, "user": "kms"}'),
        ("client_secret=abc123&x=1", "client_secret=***&x=1"),
        ("secret: s3cr3t", "secret: ***"),
        ("api_key=AKIA1234 token=t0k3n", "api_key=*** token=***"),
        (
            "connecting to postgresql://kms:hunter2@db.example:5432/kms",
            "connecting to postgresql://kms:***@db.example:5432/kms",
        ),
        ("postgresql+asyncpg://kms:p@ss@db/kms", "postgresql+asyncpg://kms:***@db/kms"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x.y", "Authorization: Bearer ***"),
    ],
)
def test_secrets_are_masked(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        '10.1.2.3:1 PC "Windows 10 Pro" oob-grace v6.0 activated count=50',
        "listening on http://[::1]:8080/metrics",
        "postgresql://db.example:5432/kms",
        "license_status=1 grace=43200",
    ],
)
def test_ordinary_text_is_not_masked(text: str) -> None:
    assert mask_secrets(text) == text


@given(st.text(alphabet=st.characters(categories=["L", "N"]), min_size=4, max_size=30))
def test_generated_passwords_never_leak(secret: str) -> None:
    # The whole masked text, not `secret not in`: "secr" is in the template's own "secret".
    for template, masked in (
        ("password={}", "password=***"),
        ("x secret: {} y", "x secret: *** y"),
        ("sqlite+x://u:{}@h/db", "sqlite+x://u:***@h/db"),
        ('"token": "{}"', '"token": ***'),
    ):
        assert mask_secrets(template.format(secret)) == masked


def test_masking_applies_to_every_format_and_tracebacks(tmp_path: Path) -> None:
    for fmt in ("text", "json", "mininfo"):
        log_file = tmp_path / f"{fmt}.log"
        setup_logging("info", fmt=fmt, file=log_file)
        other_log.warning("db at %s", "postgresql://kms:hunter2@db/kms")
        try:
            raise RuntimeError("auth failed for password=hunter2")
        except RuntimeError:
            other_log.exception("connect failed")
        text = log_file.read_text()
        assert "hunter2" not in text, fmt
        assert "postgresql://kms:***@db/kms" in text and "password=***" in text


def test_a_bad_format_string_does_not_break_the_caller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("info", file=tmp_path / "kms.log")
    other_log.info("%d items", "many")  # logging reports this on stderr; it must not raise
    assert "TypeError" in capsys.readouterr().err


def test_product_text_stays_exact_past_the_cache_bound(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client-chosen SKU and KMS ids churn the name cache; no line or field gets another's."""
    monkeypatch.setattr(activation_log_module, "_CACHE_LIMIT", 4)
    monkeypatch.setattr(activation_log_module, "_PRODUCT_TEXT", {})
    skus = list(catalog.skus)[:10]
    for round_ in range(3):
        for index, sku in enumerate(skus):
            sku_id = sku.id if (index + round_) % 2 else uuid.UUID(int=index + 1000 * round_)
            request = make_request(sku_id=sku_id, kms_id=sku.kms_id)
            fields = activation_fields(Peer("10.1.2.3", 1), served(request), catalog)
            assert fields["product"] == catalog.product_name(sku_id, sku.kms_id)
            assert (fields["sku_id"], fields["kms_id"]) == (str(sku_id), str(sku.kms_id))
            line = activation_line(Peer("10.1.2.3", 1), served(request), catalog)
            assert f'"{catalog.product_name(sku_id, sku.kms_id)}"' in line
    assert len(activation_log_module._PRODUCT_TEXT) <= 4


class CountingStream(io.StringIO):
    """A stream that counts its writes (each one a system call on a real stderr)."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _counted_stderr(monkeypatch: pytest.MonkeyPatch) -> CountingStream:
    """stderr as `kmsgate serve` logs to it at INFO, its writes counted. Called in the test
    itself: set up in a fixture, pytest's own capture handler would join during the call."""
    counting = CountingStream()
    monkeypatch.setattr(sys, "stderr", counting)
    setup_logging("info")
    return counting


async def test_one_loop_turn_of_activation_lines_leaves_in_one_write(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _counted_stderr(monkeypatch)
    for port in range(5):
        log_activation(Peer("10.0.0.1", port), served(), catalog)
    assert (stream.getvalue(), stream.writes) == ("", 0)  # held until the turn ends
    await asyncio.sleep(0)
    assert stream.writes == 1 and len(stream.getvalue().splitlines()) == 5
    # A record written meanwhile comes after the lines held before it, never ahead of them.
    log_activation(Peer("10.0.0.1", 9), served(), catalog)
    logging.getLogger("kmsgate.server").warning("after the sixth")
    lines = stream.getvalue().splitlines()
    assert ":9 " in lines[-2] and lines[-1].endswith("after the sixth")
    # flush() (logging.shutdown at exit) writes what is held.
    log_activation(Peer("10.0.0.1", 10), served(), catalog)
    logging.getLogger().handlers[0].flush()
    assert ":10 " in stream.getvalue().splitlines()[-1]
    await asyncio.sleep(0)
    assert len(stream.getvalue().splitlines()) == 8


async def test_a_busy_turn_writes_every_max_held_lines(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _counted_stderr(monkeypatch)
    for port in range(MAX_HELD_LINES * 2 + 1):
        log_activation(Peer("10.0.0.1", port), served(), catalog)
    assert stream.writes == 2 and len(stream.getvalue().splitlines()) == 2 * MAX_HELD_LINES
    await asyncio.sleep(0)
    assert stream.writes == 3 and len(stream.getvalue().splitlines()) == 2 * MAX_HELD_LINES + 1
