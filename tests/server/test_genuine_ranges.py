"""Genuine-host ranges and defaults: intervals, the ±4 h clock check, count warnings, identity
kept by a real `kmsgate serve` across restarts, and `kmsgate identity show`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import time
from pathlib import Path

import pytest

from kmsgate.config.settings import ServeSettings
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.errors import ActivationError
from kmsgate.protocol.hresult import HResult
from kmsgate.server.host import KmsHost
from tests.server.test_serve_cli import KMSGATE, start_serve, stop, wait_listening
from tests.support.kms import RawClient, activate_once, make_request
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

HOUR = 3600


def serve_fails(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KMSGATE), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--activation-interval", "14"), "activation_interval"),
        (("--activation-interval", "43201"), "activation_interval"),
        (("--renewal-interval", "43201"), "renewal_interval"),
        (("--renewal-interval", "0"), "renewal_interval"),
        (("--max-clock-skew", "-1"), "max_clock_skew"),
        (("--lcid", "9999"), "LCID"),
        (("--host-build", "2600"), "host build 2600 cannot run a KMS host"),
        (("--host-build", "0"), "host_build"),
        (("--epid", "office=03612-00206-684-137669-03-1033-17763.0000-2972018"), "key name"),
        (("--count-mode", "guess"), "count_mode"),
    ],
)
def test_out_of_range_options_exit_2_before_starting(
    args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    done = serve_fails(*args, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "listening" not in done.stderr + done.stdout
    # Nothing was started: no database, no identity.
    assert not (tmp_path / "kmsgate.db").exists()
    assert not (tmp_path / "identity.json").exists()


def test_intervals_at_the_genuine_limits_are_accepted() -> None:
    settings = ServeSettings(activation_interval=15, renewal_interval=43200)
    assert (settings.activation_interval, settings.renewal_interval) == (15, 43200)
    assert ServeSettings().max_clock_skew == 4 * HOUR


def _skewed(seconds: float):  # type: ignore[no-untyped-def]
    return dataclasses.replace(
        make_request(6), request_time=filetime_from_unix(time.time() + seconds)
    )


@pytest.mark.parametrize("sign", [1, -1])
async def test_clock_check_is_on_by_default(sign: int, tmp_path: Path) -> None:
    async with KmsHost(ServeSettings(listen=["127.0.0.1:0"], data_dir=tmp_path)) as host:
        client = await RawClient.connect(host.port)
        try:
            await client.bind()
            assert (await client.activate(6, _skewed(sign * 3.99 * HOUR))).ok
            with pytest.raises(ActivationError, match=f"0x{HResult.TIME_SKEW:08X}"):
                await client.activate(6, _skewed(sign * 4.01 * HOUR))
        finally:
            await client.close()


async def test_max_clock_skew_0_turns_the_check_off(tmp_path: Path) -> None:
    settings = ServeSettings(listen=["127.0.0.1:0"], data_dir=tmp_path, max_clock_skew=0)
    async with KmsHost(settings) as host:
        client = await RawClient.connect(host.port)
        try:
            await client.bind()
            assert (await client.activate(6, _skewed(40 * HOUR))).ok
            assert (await client.activate(6, _skewed(-400 * 24 * HOUR))).ok
        finally:
            await client.close()


async def test_a_fixed_count_below_some_products_needs_names_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ServeSettings(listen=["127.0.0.1:0"], data_dir=tmp_path, client_count=10)
    with caplog.at_level(logging.WARNING, logger="kmsgate.server"):
        async with KmsHost(settings):
            pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("--client-count 10 is below the 25 machines these products")
    assert "Windows 10/11 2021 LTSC (Volume)" in warnings[0]
    assert "Windows Server 2025" not in warnings[0]  # servers need 5
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kmsgate.server"):
        async with KmsHost(settings.model_copy(update={"client_count": 50})):
            pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _identity_of_a_run(port: int, tmp_path: Path, *extra: str) -> tuple[str, bytes, str]:
    proc = start_serve(
        "--listen", f"127.0.0.1:{port}", "--no-web", "--no-store", "--data-dir", str(tmp_path),
        *extra,
    )  # fmt: skip
    try:
        wait_listening(proc, port)
        answer = asyncio.run(activate_once(port, 6))
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    return answer.response.epid, answer.hwid or b"", out


def test_a_real_host_keeps_its_identity_across_restarts(tmp_path: Path) -> None:
    port = free_port()
    epid, hwid, out = _identity_of_a_run(port, tmp_path)
    assert "host key windows (Windows Server 2025, group 4919): ePID " + epid in out
    again, hwid_again, _ = _identity_of_a_run(port, tmp_path)
    assert (again, hwid_again) == (epid, hwid)
    shown = subprocess.run(
        [str(KMSGATE), "identity", "show", "--data-dir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    info = json.loads(shown.stdout)
    assert info["hwid"] == hwid.hex().upper()
    windows = info["keys"][0]
    assert (windows["name"], windows["epid"], windows["group_id"]) == ("windows", epid, 4919)
    assert "Windows Server 2019" in windows["products"]
    assert [k["name"] for k in info["keys"][1:]] == [
        "office2010", "office2013", "office2016", "office2019", "office2021", "office2024",
    ]  # fmt: skip
    text = subprocess.run(
        [str(KMSGATE), "identity", "show", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert f"windows: {epid}" in text and f"HWID:          {hwid.hex().upper()}" in text
    # Fits an 80-column terminal (only the file's path may be longer).
    assert max(len(line) for line in text.splitlines()[1:]) <= 80


def test_identity_show_without_a_saved_identity_says_how_to_get_one(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(KMSGATE), "identity", "show", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "`kmsgate serve` creates it" in done.stderr
    assert not (tmp_path / "identity.json").exists()
