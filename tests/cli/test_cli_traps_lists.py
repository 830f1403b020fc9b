"""Trap 1: a repeated list flag accumulates (`--allow A --allow B` keeps both)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kmsgate.cli.serve import _is_list
from kmsgate.config.settings import ServeSettings
from tests.support.cli import (
    clean_env,
    kmsgate,
    log_records,
    start_serve,
    stop_serve,
    wait_listening,
)
from tests.support.kms import RawClient, activate_once
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

# Two valid values per list setting; product names hold spaces on purpose.
SAMPLES: dict[str, tuple[str, str]] = {
    "listen": ("127.0.0.1:1688", "[::1]:1688"),
    "allow": ("127.0.0.0/8", "10.0.0.0/8"),
    "deny": ("10.9.0.0/16", "192.168.7.0/24"),
    "trust_proxy": ("10.1.0.0/16", "fd00::/8"),
    "allow_product": ("Windows 10/11 Pro", "Office*2021*"),
    "deny_product": ("Windows 7 Professional", "2de67392-b7a7-462a-b1ca-108dd189f588"),
    "epid": (
        "windows=03612-04919-000-012345-03-1033-26100.0000-3152024",
        "office2024=03612-00206-600-000001-03-1033-26100.0000-0012025",
    ),
}
LIST_FIELDS = [name for name, f in ServeSettings.model_fields.items() if _is_list(f.annotation)]


def test_every_list_setting_has_sample_values() -> None:
    # A new list setting must be added to SAMPLES, so the tests below cover it too.
    assert set(LIST_FIELDS) == set(SAMPLES)


@pytest.mark.parametrize("name", LIST_FIELDS)
def test_a_repeated_flag_keeps_every_value(name: str, tmp_path: Path) -> None:
    first, second = SAMPLES[name]
    flag = "--" + name.replace("_", "-")
    done = kmsgate("config", "show", "--json", flag, first, flag, second, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["settings"][name]
    assert shown == {"value": [first, second], "source": "cli"}


@pytest.mark.parametrize("name", LIST_FIELDS)
def test_the_environment_and_the_file_give_the_same_list(name: str, tmp_path: Path) -> None:
    first, second = SAMPLES[name]
    env = clean_env(tmp_path, **{f"KMSGATE_{name.upper()}": f"{first},{second}"})
    done = kmsgate("config", "show", "--json", tmp_path=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["settings"][name]["value"] == [first, second]
    config = tmp_path / "kmsgate.toml"
    config.write_text(f"{name} = {json.dumps([first, second])}\n")
    done = kmsgate("config", "show", "--json", "--config", str(config), tmp_path=tmp_path)
    assert json.loads(done.stdout)["settings"][name] == {
        "value": [first, second],
        "source": "file",
    }


def test_serve_listens_on_every_repeated_listen_address(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    proc = start_serve(
        "--listen", f"127.0.0.1:{ports[0]}", "--listen", f"127.0.0.1:{ports[1]}",
        "--no-web", "--data-dir", str(tmp_path / "data"), tmp_path=tmp_path,
    )  # fmt: skip
    try:
        for port in ports:
            wait_listening(proc, port)
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err
    messages = [msg for _, _, msg in log_records(err)]
    assert [m for m in messages if m.startswith("listening on")] == [
        f"listening on 127.0.0.1:{ports[0]}",
        f"listening on 127.0.0.1:{ports[1]}",
    ]


def test_serve_allows_every_repeated_allow_network(tmp_path: Path) -> None:
    # Loopback first: when only the last --allow was kept, 127.0.0.1 was refused.
    port = free_port()
    proc = start_serve(
        "--listen", f"127.0.0.1:{port}", "--allow", "127.0.0.0/8", "--allow", "10.0.0.0/8",
        "--no-web", "--data-dir", str(tmp_path / "data"), tmp_path=tmp_path,
    )  # fmt: skip
    try:
        wait_listening(proc, port)
        assert asyncio.run(activate_once(port)).ok
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err
    assert "refused" not in err


def test_serve_denies_every_repeated_deny_network(tmp_path: Path) -> None:
    # Loopback first among the --deny values: it must stay denied after the second one.
    port = free_port()
    proc = start_serve(
        "--listen", f"127.0.0.1:{port}", "--deny", "127.0.0.0/8", "--deny", "10.9.0.0/16",
        "--no-web", "--data-dir", str(tmp_path / "data"), tmp_path=tmp_path,
    )  # fmt: skip
    try:
        wait_listening(proc, port)
        with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError)):
            asyncio.run(activate_once(port))
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err


def test_serve_denies_an_ipv4_client_by_its_mapped_network(tmp_path: Path) -> None:
    port = free_port()
    proc = start_serve(
        "--listen", f"127.0.0.1:{port}", "--deny", "::ffff:127.0.0.7/128",
        "--no-web", "--data-dir", str(tmp_path / "data"), tmp_path=tmp_path,
    )  # fmt: skip
    try:
        wait_listening(proc, port)
        denied = asyncio.run(activate_from(port, source="127.0.0.7"))
        served = asyncio.run(activate_from(port, source="127.0.0.8"))
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err
    assert (denied, served) == ("refused", "served")
    assert "127.0.0.7" in err and "denied by the source policy" in err


async def activate_from(port: int, *, source: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    client = RawClient(reader, writer)
    try:
        await client.bind()
        await client.activate()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        return "refused"
    finally:
        await client.close()
    return "served"
