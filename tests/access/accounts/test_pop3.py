"""POP3 backend against a real Dovecot (plain, STLS, POP3S), plus a scripted fake for edge cases."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import ValidationError

from kmsgate.access.accounts.backends import build_backend
from kmsgate.access.accounts.base import AuthResult, BackendUnavailable, Pop3Settings
from kmsgate.access.accounts.pop3 import Pop3Backend
from tests.support.account_servers import (
    OTHER_LOOPBACK,
    DovecotServer,
    running_dovecot,
    silent_listener,
)
from tests.support.ports import closed_port

pytestmark = pytest.mark.integration

Mode = Literal["plain", "stls", "pop3s"]
MODES: list[Mode] = ["plain", "stls", "pop3s"]


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotServer]:
    """One Dovecot for the module."""
    with running_dovecot() as server:
        yield server


def settings(server: DovecotServer, mode: str = "stls", **overrides: Any) -> Pop3Settings:
    """Settings for a mode, with the test CA trusted."""
    port = server.pop3s_port if mode == "pop3s" else server.pop3_port
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "mode": mode,
        "ca_file": server.tls.ca,
        "timeout": 3,
    }
    values.update(overrides)
    return Pop3Settings(**values)


async def login(config: Pop3Settings, username: str, password: str) -> AuthResult:
    """Authenticate and check that the password shows up nowhere in the result."""
    backend = build_backend(config)
    try:
        result = await backend.authenticate(username, password)
    finally:
        await backend.close()
    assert result.backend == "pop3"
    if password.strip():
        assert password not in result.reason
    return result


# ---------------------------------------------------------------- the basics, every mode


@pytest.mark.parametrize("mode", MODES)
async def test_right_password_is_accepted(dovecot: DovecotServer, mode: str) -> None:
    result = await login(settings(dovecot, mode), " alice ", "Wonderland-1")
    assert result == AuthResult(ok=True, user="alice", reason="ok", backend="pop3")


@pytest.mark.parametrize("mode", MODES)
async def test_wrong_password_is_refused(dovecot: DovecotServer, mode: str) -> None:
    result = await login(settings(dovecot, mode), "alice", "wonderland-1")
    assert not result.ok
    assert result.reason.startswith("login refused")
    assert "[AUTH]" in result.reason


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_user_is_refused(dovecot: DovecotServer, mode: str) -> None:
    result = await login(settings(dovecot, mode), "mallory", "Wonderland-1")
    assert not result.ok


async def test_non_ascii_password(dovecot: DovecotServer) -> None:
    assert (await login(settings(dovecot), "bob", "pässwörd Bob")).ok
    assert not (await login(settings(dovecot), "bob", "passwort Bob")).ok


async def test_username_template(dovecot: DovecotServer) -> None:
    config = settings(dovecot, username_template="{user}@example.org")
    result = await login(config, "carol", "carol-pass")
    assert result.ok
    assert result.user == "carol"  # the portal's name, not the mail login
    assert not (await login(config, "alice", "Wonderland-1")).ok


@pytest.mark.parametrize("mode", MODES)
async def test_empty_password_fails(dovecot: DovecotServer, mode: str) -> None:
    result = await login(settings(dovecot, mode), "alice", "")
    assert not result.ok
    assert result.reason == "empty password"


@pytest.mark.parametrize(
    "username", ["*)(uid=*", "admin)(|(uid=*", "alice admin", "%", "alice@", "../alice"]
)
async def test_injection_attempts_fail(dovecot: DovecotServer, username: str) -> None:
    # Dovecot answers unknown names after ~0.5 s: one password per name keeps this quick.
    assert not (await login(settings(dovecot), username, "Wonderland-1")).ok


@pytest.mark.parametrize("username", ["ali\r\nce", "alice\nQUIT", "", "a" * 257])
async def test_invalid_usernames_fail(dovecot: DovecotServer, username: str) -> None:
    result = await login(settings(dovecot), username, "Wonderland-1")
    assert not result.ok
    assert result.user == ""


@pytest.mark.parametrize("password", ["Wonderland-1\r\nQUIT", "x\nPASS Wonderland-1", "a\x00b"])
async def test_line_breaks_in_password_are_refused_before_sending(password: str) -> None:
    # A closed port: any network attempt would raise BackendUnavailable instead.
    config = Pop3Settings(host="127.0.0.1", port=closed_port(), mode="plain")
    result = await login(config, "alice", password)
    assert not result.ok
    assert "CR/LF" in result.reason


async def test_empty_password_never_reaches_the_network() -> None:
    config = Pop3Settings(host="127.0.0.1", port=closed_port(), mode="plain")
    assert (await login(config, "alice", "")).reason == "empty password"


# ---------------------------------------------------------------- TLS


@pytest.mark.parametrize("mode", ["stls", "pop3s"])
async def test_unknown_ca_is_unavailable(dovecot: DovecotServer, mode: str) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        await login(settings(dovecot, mode, ca_file=None), "alice", "Wonderland-1")
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.reason


@pytest.mark.parametrize("mode", ["stls", "pop3s"])
async def test_hostname_mismatch_is_unavailable(dovecot: DovecotServer, mode: str) -> None:
    config = settings(dovecot, mode, host=OTHER_LOOPBACK)
    with pytest.raises(BackendUnavailable) as caught:
        await login(config, "alice", "Wonderland-1")
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.reason


async def test_verification_can_be_switched_off(dovecot: DovecotServer) -> None:
    config = settings(dovecot, "pop3s", host=OTHER_LOOPBACK, ca_file=None, verify_tls=False)
    assert (await login(config, "alice", "Wonderland-1")).ok


# ---------------------------------------------------------------- unavailable


async def test_closed_port_is_unavailable_quickly() -> None:
    config = Pop3Settings(host="127.0.0.1", port=closed_port(), mode="pop3s")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await login(config, "alice", "Wonderland-1")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("mode", MODES)
async def test_silent_server_times_out(mode: Mode) -> None:
    with silent_listener() as port:
        config = Pop3Settings(host="127.0.0.1", port=port, mode=mode, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await login(config, "alice", "Wonderland-1")
        assert time.monotonic() - started < 5


# ---------------------------------------------------------------- scripted server


class FakePop3:
    """A one-thread scripted POP3 server: no STLS, a fixed answer to PASS, records commands."""

    def __init__(self, pass_reply: bytes) -> None:
        self.pass_reply = pass_reply
        self.commands: list[bytes] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakePop3:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        deadline = time.monotonic() + 30  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        conn.sendall(b"+OK fake ready\r\n")
        reader = conn.makefile("rb")
        for _ in range(20):  # bounded session
            line = reader.readline(1024)
            if not line:
                return
            command = line.rstrip(b"\r\n")
            self.commands.append(command)
            verb = command.split(b" ", 1)[0].upper()
            if verb == b"CAPA":
                conn.sendall(b"+OK\r\nUSER\r\nRESP-CODES\r\n.\r\n")
            elif verb == b"USER":
                conn.sendall(b"+OK\r\n")
            elif verb == b"PASS":
                conn.sendall(self.pass_reply + b"\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"+OK bye\r\n")
                return
            else:
                conn.sendall(b"-ERR unknown\r\n")


async def test_stls_mode_never_falls_back_to_cleartext() -> None:
    with FakePop3(b"+OK welcome") as fake:
        config = Pop3Settings(host="127.0.0.1", port=fake.port, mode="stls", timeout=2)
        with pytest.raises(BackendUnavailable) as caught:
            await login(config, "alice", "Wonderland-1")
    assert "STLS" in caught.value.reason
    assert not any(c.upper().startswith((b"USER", b"PASS")) for c in fake.commands)


async def test_plain_mode_against_the_fake_accepts_ok() -> None:
    # The fake itself works: the same server in plain mode takes the login.
    with FakePop3(b"+OK welcome") as fake:
        config = Pop3Settings(host="127.0.0.1", port=fake.port, mode="plain", timeout=2)
        assert (await login(config, "alice", "Wonderland-1")).ok
    assert b"PASS Wonderland-1" in fake.commands


@pytest.mark.parametrize(
    "reply",
    [b"-ERR [SYS/TEMP] auth service down", b"-ERR [SYS/PERM] broken", b"-ERR [IN-USE] locked"],
)
async def test_server_trouble_codes_are_unavailable_not_wrong_password(reply: bytes) -> None:
    with FakePop3(reply) as fake:
        config = Pop3Settings(host="127.0.0.1", port=fake.port, mode="plain", timeout=2)
        with pytest.raises(BackendUnavailable) as caught:
            await login(config, "alice", "Wonderland-1")
    assert reply.decode()[5:] in caught.value.reason


async def test_server_text_is_sanitised_for_the_log() -> None:
    with FakePop3(b"-ERR [AUTH] bad\x1b[31m login") as fake:
        config = Pop3Settings(host="127.0.0.1", port=fake.port, mode="plain", timeout=2)
        result = await login(config, "alice", "Wonderland-1")
    assert not result.ok
    assert "\x1b" not in result.reason


# ---------------------------------------------------------------- settings


def test_default_ports() -> None:
    assert Pop3Settings(host="h").effective_port == 110
    assert Pop3Settings(host="h", mode="pop3s").effective_port == 995
    assert Pop3Settings(host="h").mode == "stls"  # TLS by default
    assert isinstance(build_backend(Pop3Settings(host="h")), Pop3Backend)


@pytest.mark.parametrize(
    "values",
    [
        {"host": "h", "mode": "tls"},
        {"host": "h", "port": 0},
        {"host": "h", "username_template": "alice"},
        {"host": "h", "timeout": -1},
    ],
)
def test_invalid_settings_are_rejected(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Pop3Settings(**values)
