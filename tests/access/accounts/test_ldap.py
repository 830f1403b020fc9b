"""LDAP backend against a real OpenLDAP slapd: binds, escaping, TLS, timeouts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from kmsgate.access.accounts.backends import build_backend
from kmsgate.access.accounts.base import AuthResult, BackendUnavailable, LdapSettings
from kmsgate.access.accounts.ldap import LdapBackend
from tests.support.account_servers import (
    BASE_DN,
    OTHER_LOOPBACK,
    PEOPLE_DN,
    SERVICE_DN,
    SlapdServer,
    ldapwhoami,
    running_slapd,
    silent_listener,
)
from tests.support.ports import closed_port

pytestmark = pytest.mark.integration

MODES = ["template", "search-service", "search-anonymous"]
INJECTIONS = [
    "*)(uid=*",
    "admin)(|(uid=*",
    "*",
    "al*",
    "alice)(uid=*",
    "alice\\",
    "*)(|(objectClass=*",
]


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    """One slapd for the module."""
    with running_slapd() as server:
        yield server


def settings(server: SlapdServer, mode: str = "template", **overrides: Any) -> LdapSettings:
    """Settings for one of the three ways to find the user, with the test CA trusted."""
    values: dict[str, Any] = {"url": server.ldap_url, "ca_file": server.tls.ca, "timeout": 3}
    if mode == "template":
        values["bind_dn_template"] = f"uid={{user}},{PEOPLE_DN}"
    else:
        values["search_base"] = BASE_DN
        if mode == "search-service":
            values["service_bind_dn"] = SERVICE_DN
            values["service_password"] = server.service_password
    values.update(overrides)
    return LdapSettings(**values)


async def login(config: LdapSettings, username: str, password: str) -> AuthResult:
    """Authenticate and check that the password shows up nowhere in the result."""
    backend = build_backend(config)
    try:
        result = await backend.authenticate(username, password)
    finally:
        await backend.close()
    assert result.backend == "ldap"
    if password.strip():
        assert password not in result.reason
        assert password not in result.user
    return result


# ---------------------------------------------------------------- the basics, every mode


@pytest.mark.parametrize("mode", MODES)
async def test_right_password_is_accepted(slapd: SlapdServer, mode: str) -> None:
    result = await login(settings(slapd, mode), "alice", "Wonderland-1")
    assert result == AuthResult(ok=True, user="alice", reason="ok", backend="ldap")


@pytest.mark.parametrize("mode", MODES)
async def test_canonical_name_comes_from_the_directory(slapd: SlapdServer, mode: str) -> None:
    # uid matching is case-insensitive in LDAP; the audit log gets the stored spelling.
    result = await login(settings(slapd, mode), "  ALICE ", "Wonderland-1")
    assert result.ok
    assert result.user == "alice"


@pytest.mark.parametrize("mode", ["search-service", "search-anonymous"])
async def test_canonical_name_is_the_value_that_was_typed(slapd: SlapdServer, mode: str) -> None:
    # uid is multi-valued here ("dave" and "d.smith"): report the one the user logged in with.
    for typed, expected in (("D.Smith", "d.smith"), ("dave", "dave")):
        result = await login(settings(slapd, mode), typed, "dave-pass")
        assert (result.ok, result.user) == (True, expected)


@pytest.mark.parametrize("mode", MODES)
async def test_wrong_password_is_refused(slapd: SlapdServer, mode: str) -> None:
    result = await login(settings(slapd, mode), "alice", "wonderland-1")
    assert not result.ok
    assert result.reason == "invalid credentials"
    assert result.user == "alice"


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_user_is_refused(slapd: SlapdServer, mode: str) -> None:
    result = await login(settings(slapd, mode), "mallory", "Wonderland-1")
    assert not result.ok
    assert result.reason in ("invalid credentials", "unknown user")


@pytest.mark.parametrize("mode", MODES)
async def test_non_ascii_cleartext_password(slapd: SlapdServer, mode: str) -> None:
    assert (await login(settings(slapd, mode), "bob", "pässwörd Bob")).ok
    assert not (await login(settings(slapd, mode), "bob", "passwort Bob")).ok


@pytest.mark.parametrize("mode", MODES)
async def test_dn_special_characters_are_escaped_not_rejected(
    slapd: SlapdServer, mode: str
) -> None:
    # "doe, john" needs "\," in the DN: proves escape_rdn (and the filter path) is used.
    result = await login(settings(slapd, mode), "doe, john", "comma-in-uid")
    assert result.ok
    assert result.user == "doe, john"


async def test_ambiguous_search_is_refused(slapd: SlapdServer) -> None:
    result = await login(settings(slapd, "search-service"), "twin", "twin-pass")
    assert not result.ok
    assert "ambiguous" in result.reason


# ---------------------------------------------------------------- empty password trap


async def test_server_really_accepts_unauthenticated_binds(slapd: SlapdServer) -> None:
    # The trap is armed: a DN with an empty password is "anonymous" success on this server.
    out = ldapwhoami(slapd, slapd.user_dn("alice"), "")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "anonymous"


@pytest.mark.parametrize("mode", MODES)
async def test_empty_password_fails(slapd: SlapdServer, mode: str) -> None:
    result = await login(settings(slapd, mode), "alice", "")
    assert not result.ok
    assert result.reason == "empty password"


async def test_empty_password_never_reaches_the_network() -> None:
    # Against a closed port any network attempt would raise BackendUnavailable.
    config = LdapSettings(
        url=f"ldap://127.0.0.1:{closed_port()}", bind_dn_template=f"uid={{user}},{PEOPLE_DN}"
    )
    result = await login(config, "alice", "")
    assert not result.ok
    assert result.reason == "empty password"


async def test_blank_password_is_a_real_bind_that_fails(slapd: SlapdServer) -> None:
    result = await login(settings(slapd), "alice", " ")
    assert not result.ok
    assert result.reason == "invalid credentials"


# ---------------------------------------------------------------- injection


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("username", INJECTIONS)
async def test_injection_attempts_fail(slapd: SlapdServer, mode: str, username: str) -> None:
    # With alice's real password: an unescaped "(uid=al*)" would match her and bind.
    for password in ("Wonderland-1", "admin-secret"):
        result = await login(settings(slapd, mode), username, password)
        assert not result.ok, (username, password, result)


@pytest.mark.parametrize("username", ["", "   ", "ali\nce", "ali\x00ce", "a" * 257, "bob\u200b"])
async def test_invalid_usernames_fail_without_echo(slapd: SlapdServer, username: str) -> None:
    result = await login(settings(slapd), username, "Wonderland-1")
    assert not result.ok
    assert result.user == ""
    assert result.reason.startswith("invalid username")


# ---------------------------------------------------------------- TLS


@pytest.mark.parametrize("mode", ["template", "search-service"])
async def test_ldaps_with_the_test_ca(slapd: SlapdServer, mode: str) -> None:
    result = await login(settings(slapd, mode, url=slapd.ldaps_url), "alice", "Wonderland-1")
    assert result.ok


@pytest.mark.parametrize("mode", ["template", "search-service"])
async def test_start_tls_with_the_test_ca(slapd: SlapdServer, mode: str) -> None:
    result = await login(settings(slapd, mode, start_tls=True), "alice", "Wonderland-1")
    assert result.ok


@pytest.mark.parametrize("tls", ["ldaps", "start_tls"])
async def test_unknown_ca_is_unavailable(slapd: SlapdServer, tls: str) -> None:
    extra: dict[str, Any] = {"url": slapd.ldaps_url} if tls == "ldaps" else {"start_tls": True}
    config = settings(slapd, ca_file=None, **extra)
    with pytest.raises(BackendUnavailable) as caught:
        await login(config, "alice", "Wonderland-1")
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.reason
    assert "Wonderland-1" not in str(caught.value)


async def test_hostname_mismatch_is_unavailable(slapd: SlapdServer) -> None:
    # Trusted CA, but the certificate does not name this address.
    url = f"ldaps://{OTHER_LOOPBACK}:{slapd.ldaps_port}"
    with pytest.raises(BackendUnavailable) as caught:
        await login(settings(slapd, url=url), "alice", "Wonderland-1")
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.reason


async def test_verification_can_be_switched_off(slapd: SlapdServer) -> None:
    url = f"ldaps://{OTHER_LOOPBACK}:{slapd.ldaps_port}"
    config = settings(slapd, url=url, ca_file=None, verify_tls=False)
    assert (await login(config, "alice", "Wonderland-1")).ok


# ---------------------------------------------------------------- unavailable


async def test_closed_port_is_unavailable_quickly() -> None:
    config = LdapSettings(
        url=f"ldap://127.0.0.1:{closed_port()}", bind_dn_template=f"uid={{user}},{PEOPLE_DN}"
    )
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await login(config, "alice", "Wonderland-1")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("start_tls", [False, True])
async def test_silent_server_times_out(start_tls: bool) -> None:
    with silent_listener() as port:
        config = LdapSettings(
            url=f"ldap://127.0.0.1:{port}",
            bind_dn_template=f"uid={{user}},{PEOPLE_DN}",
            start_tls=start_tls,
            timeout=0.5,
        )
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await login(config, "alice", "Wonderland-1")
        assert time.monotonic() - started < 5


async def test_wrong_service_password_is_unavailable(slapd: SlapdServer) -> None:
    config = settings(slapd, "search-service", service_password="not-the-password")
    with pytest.raises(BackendUnavailable) as caught:
        await login(config, "alice", "Wonderland-1")
    assert "service bind" in caught.value.reason
    assert "not-the-password" not in str(caught.value)


async def test_missing_search_base_is_unavailable(slapd: SlapdServer) -> None:
    config = settings(slapd, "search-service", search_base="ou=nowhere,dc=example,dc=org")
    with pytest.raises(BackendUnavailable):
        await login(config, "alice", "Wonderland-1")


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "values",
    [
        {"url": "ldap://h"},  # neither mode
        {"url": "ldap://h", "bind_dn_template": "uid={user},o=x", "search_base": "o=x"},
        {"url": "ldap://h", "bind_dn_template": "uid=alice,o=x"},  # no placeholder
        {"url": "ldaps://h", "bind_dn_template": "uid={user},o=x", "start_tls": True},
        {"url": "http://h", "bind_dn_template": "uid={user},o=x"},
        {"url": "ldap://h/o=x?uid", "bind_dn_template": "uid={user},o=x"},
        {"url": "ldap://h", "search_base": "o=x", "search_filter": "uid={user}"},
        {"url": "ldap://h", "search_base": "o=x", "service_bind_dn": "cn=r,o=x"},
        {
            "url": "ldap://h",
            "search_base": "o=x",
            "service_bind_dn": "cn=r",
            "service_password": "",
        },
        {"url": "ldap://h", "bind_dn_template": "uid={user},o=x", "timeout": 0},
    ],
)
def test_invalid_settings_are_rejected(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LdapSettings(**values)


def test_service_password_is_hidden_in_repr() -> None:
    config = LdapSettings(
        url="ldap://h",
        search_base="o=x",
        service_bind_dn="cn=r,o=x",
        service_password=SecretStr("s3cret!"),
    )
    assert "s3cret!" not in repr(config)
    assert isinstance(build_backend(config), LdapBackend)
