"""Trap 6: errors in the user's words (no pydantic internals; names, values and choices)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import (
    clean_env,
    kmsgate,
    start_serve,
    stop_serve,
    wait_listening,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

PYDANTIC_WORDS = ("Value error", "Input tag", "Input should", "errors.pydantic.dev", "type=")

# (options, the one error line)
BAD_SETTINGS = [
    (["--accounts", '{"backend": "ldpa"}'],
     "accounts.backend: 'ldpa' is not one of local, ldap, pop3, sql (did you mean ldap?)"),
    (["--accounts", '{"backend": "ldap"}'],
     "accounts.url: missing (required for the ldap account backend)"),
    (["--accounts", '{"backend": "ldap", "url": "ldap://x", "search_base": "o=x", '
      '"servce_bind_dn": "cn=a"}'],
     "accounts.servce_bind_dn: unknown key (did you mean service_bind_dn?)"),
    (["--accounts", "{backend: ldap}"],
     "accounts: not JSON (Expecting property name enclosed in double quotes at character 1); "
     'write it as {"backend": "ldap", "url": "ldaps://...", ...}'),
    (["--log-format", "jsn"], "log_format: 'jsn' is not one of text, json, mininfo "
     "(did you mean json?)"),
    (["--store-writer", "inlne"], "store_writer: 'inlne' is not one of process, inline "
     "(did you mean inline?)"),
    (["--activation-interval", "5"], "activation_interval: 5 is below the minimum 15"),
    (["--client-count", "many"], "client_count: 'many' is not a whole number"),
    (["--lcid", "5"], "lcid: 5 is not a Windows LCID a KMS host reports"),
    (["--hwid", "xyz"], "hwid: HWID 'xyz' must be 16 hexadecimal digits"),
    (["--nft-table", "1x"], "nft_table: '1x' does not match ^[A-Za-z][A-Za-z0-9_]{0,63}$"),
    (["--db", "mysql://kms:Secret-Pw@db/kms"],
     "db: mysql:// databases are not supported: give a file path, sqlite:////ABSOLUTE/PATH or "
     "postgresql://USER@HOST[:PORT]/DB"),
    (["--db", "postgresql://kms:Secret-Pw@db:port/kms"],
     "db: database URL 'postgresql://kms:***@db:port/kms' has an invalid port"),
    (["--allow", "10.0.0.0/33"],
     "allow: '10.0.0.0/33' is not an IP network in CIDR form: '10.0.0.0/33' does not appear "
     "to be an IPv4 or IPv6 network"),
    (["--min-password-length", "0"], "min_password_length: 0 is below the minimum 1"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "line"), BAD_SETTINGS)
def test_a_bad_setting_is_one_line_in_the_users_words(
    args: list[str], line: str, tmp_path: Path
) -> None:
    for command in (["serve"], ["config", "show"]):
        done = kmsgate(*command, *args, tmp_path=tmp_path)
        assert done.returncode == 2
        assert done.stderr == f"error: {line}\n"
        assert not any(word in done.stderr for word in PYDANTIC_WORDS)
        assert "Secret-Pw" not in done.stderr


def test_read_commands_word_bad_settings_the_same(tmp_path: Path) -> None:
    env = clean_env(tmp_path, KMSGATE_LOG_FORMAT="jsn")
    done = kmsgate("stats", tmp_path=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr == "error: log_format: 'jsn' is not one of text, json, mininfo " \
        "(did you mean json?)\n"  # fmt: skip


def test_serve_config_with_a_typo_names_the_file_and_the_likely_key(tmp_path: Path) -> None:
    config = tmp_path / "kmsgate.toml"
    config.write_text(
        'client_cont = 5\nlisen = ["127.0.0.1:1688"]\n[accounts]\nbackend = "local"\n'
    )
    for command in (["serve"], ["config", "show"]):
        done = kmsgate(*command, "--config", str(config), tmp_path=tmp_path)
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"error: {config}: client_cont: unknown key (did you mean client_count?)",
            f"error: {config}: lisen: unknown key (did you mean listen?)",
        ]
    done = kmsgate("config", "check", str(config), tmp_path=tmp_path)
    assert done.stderr.splitlines() == [
        f"error: {config}:1: client_cont: unknown key (did you mean client_count?)",
        f"error: {config}:2: lisen: unknown key (did you mean listen?)",
    ]
    config.write_text("window = 600\nlisten = [,]\n")
    done = kmsgate("serve", "--config", str(config), tmp_path=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        f"error: {config}: TOML syntax error: Invalid value (at line 2, column 11)\n"
    )


def test_a_mapped_network_is_a_warning_with_the_ipv4_network_used(tmp_path: Path) -> None:
    done = kmsgate("config", "show", "--json", "--deny", "::ffff:10.9.0.0/112",
                   tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 0
    assert done.stderr == (
        "warning: deny: ::ffff:10.9.0.0/112 is IPv4-mapped; using the IPv4 network 10.9.0.0/16\n"
    )


def test_host_bits_are_a_warning_with_the_network_used(tmp_path: Path) -> None:
    done = kmsgate("config", "show", "--json", "--allow", "10.0.0.1/8", "--deny", "10.0.0.0/24",
                   "--trust-proxy", "fd00::1/8", tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "warning: allow: 10.0.0.1/8 has host bits set; using the network 10.0.0.0/8",
        "warning: trust_proxy: fd00::1/8 has host bits set; using the network fd00::/8",
    ]
    assert json.loads(done.stdout)["warnings"] == [
        line.removeprefix("warning: ") for line in done.stderr.splitlines()
    ]
    config = tmp_path / "kmsgate.toml"
    config.write_text('deny = ["192.168.1.77/24"]\n')
    done = kmsgate("config", "check", str(config), tmp_path=tmp_path)
    assert done.returncode == 0
    assert done.stdout == f"{config}: ok\n"
    assert done.stderr == (
        f"warning: {config}: deny: 192.168.1.77/24 has host bits set; using the network "
        "192.168.1.0/24\n"
    )


@contextlib.contextmanager
def kmsgate_web(tmp_path: Path) -> Iterator[int]:
    """A real kmsgate serve; yields the port of its web dashboard (uvicorn)."""
    port, web = free_port(), free_port()
    proc = start_serve("--listen", f"127.0.0.1:{port}", "--web", f"127.0.0.1:{web}",
                       "--data-dir", str(tmp_path / "data"), tmp_path=tmp_path)  # fmt: skip
    try:
        wait_listening(proc, web)
        yield web
    finally:
        code, _, err = stop_serve(proc)
        assert code == 0, err


def test_the_client_says_an_http_port_speaks_http(tmp_path: Path) -> None:
    # The classic slip: pointing the client at the dashboard's port.
    with kmsgate_web(tmp_path) as web:
        done = kmsgate("client", f"127.0.0.1:{web}", "--timeout", "5", tmp_path=tmp_path)
        as_json = kmsgate("client", f"127.0.0.1:{web}", "--timeout", "5", "--json",
                          tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 3
    assert done.stderr == (
        f"error: 127.0.0.1:{web}: that port speaks HTTP, not KMS (a web server, such as the "
        "kmsgate dashboard? KMS hosts listen on port 1688); 0x800706BA (the RPC server is "
        "unavailable)\n"
    )
    error = json.loads(as_json.stdout)["error"]
    assert error["type"] == "WrongProtocolError"


@pytest.mark.parametrize(
    ("banner", "protocol"),
    [(b"SSH-2.0-OpenSSH_9.6\r\n", "SSH"), (b"\x15\x03\x03\x00\x02\x02\x50", "TLS")],
)
def test_the_client_names_other_protocols_too(banner: bytes, protocol: str, tmp_path: Path) -> None:
    async def run() -> tuple[int, str]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(banner)
            await writer.drain()
            with contextlib.suppress(ConnectionError):
                await reader.read(100)
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            done = await asyncio.to_thread(
                kmsgate, "client", f"127.0.0.1:{port}", "--timeout", "5", tmp_path=tmp_path
            )
        return done.returncode, done.stderr

    code, err = asyncio.run(run())
    assert code == 3
    assert f"that port speaks {protocol}, not KMS" in err
