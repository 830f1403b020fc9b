"""POP3 XCLIENT: a trusted Dovecot learns the portal client's address (its penalties use it)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from kmsgate.access.accounts.base import BackendUnavailable, Pop3Settings
from kmsgate.access.accounts.pop3 import Pop3Backend
from tests.support.account_servers import DovecotServer, running_dovecot

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trusting() -> Iterator[DovecotServer]:
    """Dovecot that lets 127.0.0.1 (kmsgate here) name its clients."""
    with running_dovecot(login_trusted_networks="127.0.0.1/32") as server:
        yield server


def backend(server: DovecotServer, *, forward: bool = True, mode: str = "stls") -> Pop3Backend:
    return Pop3Backend(
        Pop3Settings(
            host="127.0.0.1",
            port=server.pop3_port,
            mode=mode,  # type: ignore[arg-type]
            ca_file=server.tls.ca,
            timeout=3,
            forward_client_address=forward,
        )
    )


def last_rip(server: DovecotServer, user: str, seen_before: int = 0) -> str:
    """The remote address Dovecot logged for `user`'s latest login (it logs a failure when
    the connection ends, so wait for the line, within bounds)."""
    deadline = time.monotonic() + 10
    while True:
        found = re.findall(rf"user=<{re.escape(user)}>.*?rip=([^,]+),", server.log.read_text())
        if len(found) > seen_before:
            return str(found[-1])
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.05)


def logged(server: DovecotServer, user: str) -> int:
    return len(re.findall(rf"user=<{re.escape(user)}>.*?rip=", server.log.read_text()))


@pytest.mark.parametrize(
    ("client", "seen"),
    [
        ("10.20.30.40", "10.20.30.40"),
        ("::ffff:10.20.30.41", "10.20.30.41"),  # canonical: IPv4-mapped becomes IPv4
        ("2001:db8::7", "2001:db8::7"),
        ("unknown", "127.0.0.1"),  # not an address: nothing is forwarded
    ],
)
async def test_the_server_sees_the_portal_client(
    trusting: DovecotServer, client: str, seen: str
) -> None:
    before = logged(trusting, "bob")
    result = await backend(trusting).authenticate(
        "bob", trusting.users["bob"], client_address=client
    )
    assert result.ok
    assert last_rip(trusting, "bob", before) == seen


async def test_failures_are_charged_to_the_client_too(trusting: DovecotServer) -> None:
    before = logged(trusting, "alice")
    result = await backend(trusting, mode="plain").authenticate(
        "alice", "typo", client_address="10.20.30.50"
    )
    assert not result.ok and result.reason.startswith("login refused")
    assert last_rip(trusting, "alice", before) == "10.20.30.50"


async def test_without_the_option_nothing_is_forwarded(trusting: DovecotServer) -> None:
    before = logged(trusting, "admin")
    plain = backend(trusting, forward=False)
    result = await plain.authenticate("admin", trusting.users["admin"], client_address="10.9.9.9")
    assert result.ok and last_rip(trusting, "admin", before) == "127.0.0.1"


async def test_an_untrusting_server_makes_forwarding_fail_loudly() -> None:
    with (
        running_dovecot() as server,
        pytest.raises(BackendUnavailable, match="login_trusted_networks"),
    ):
        await backend(server).authenticate("bob", server.users["bob"], client_address="10.2.3.4")
