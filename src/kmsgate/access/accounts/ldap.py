"""LDAP accounts: simple bind as the user, either via a DN template or after a search."""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from typing import Any
from urllib.parse import urlsplit

from ldap3 import ANONYMOUS, BASE, NONE, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPException,
    LDAPInvalidDnError,
    LDAPInvalidFilterError,
    LDAPInvalidValueError,
    LDAPPasswordIsMandatoryError,
    LDAPSASLPrepError,
)
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from kmsgate.access.accounts.base import (
    USER_PLACEHOLDER,
    AuthResult,
    BackendUnavailable,
    LdapSettings,
    client_tls_context,
    is_loopback,
    normalize_username,
    precheck,
    run_blocking,
)

log = logging.getLogger("kmsgate.access.accounts.ldap")

# LDAP result codes (RFC 4511 §4.1.9) that mean "these credentials are refused" rather than
# "the server has a problem": invalidCredentials, inappropriateAuthentication,
# insufficientAccessRights, unwillingToPerform (OpenLDAP/AD answer locked accounts so),
# and invalidDNSyntax (the DN is built from what the user typed).
_USER_REFUSALS = {
    34: "invalid DN syntax",
    48: "inappropriate authentication",
    49: "invalid credentials",
    50: "insufficient access rights",
    53: "server unwilling to bind this account",
}
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
# Errors raised for what the *user* typed (a value the directory cannot take).
_INPUT_ERRORS = (
    LDAPInvalidDnError,
    LDAPInvalidFilterError,
    LDAPInvalidValueError,
    LDAPSASLPrepError,
    LDAPPasswordIsMandatoryError,
)


# ldap3 2.9 switches the context's check_hostname off and relies on ssl.match_hostname,
# which Python 3.12 removed (its own fallback ignores IP-address SANs): let the standard
# library verify the certificate and the name during the handshake instead.
class _ContextTls(Tls):  # type: ignore[misc]  # ldap3 ships no type hints
    """ldap3's Tls wrapping with our SSLContext, which checks certificate and hostname."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str) -> None:
        super().__init__(validate=context.verify_mode)
        self._context = context
        self._server_hostname = server_hostname

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        """Wrap the connection's socket (ldaps at connect, or after the StartTLS reply)."""
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._server_hostname,
        )


class LdapBackend:
    """Authenticates with an LDAP simple bind; never anonymous, never unescaped input."""

    name: str = "ldap"

    def __init__(self, settings: LdapSettings) -> None:
        """Prepare the server address and TLS context (nothing is contacted yet)."""
        self.settings = settings
        parts = urlsplit(settings.url)
        self._host = parts.hostname or ""
        self._use_ssl = parts.scheme.lower() == "ldaps"
        self._port = parts.port or (636 if self._use_ssl else 389)
        self._tls_context = client_tls_context(settings.ca_file, settings.verify_tls)
        self._tls = self._use_ssl or settings.start_tls
        if not settings.verify_tls:
            log.warning("LDAP %s: TLS certificate verification is OFF", self._host)
        if not self._tls and not is_loopback(self._host):
            log.warning("LDAP %s: passwords travel in cleartext (use ldaps/StartTLS)", self._host)

    # ------------------------------------------------------------ public API

    async def authenticate(
        self, username: str, password: str, *, client_address: str | None = None
    ) -> AuthResult:
        """Bind as the user; BackendUnavailable when the directory cannot be asked.

        `client_address` is unused: an LDAP bind cannot name the client, and slapd does not
        delay failed binds (ppolicy lockouts, where enabled, are per account).
        """
        checked = precheck(self.name, username, password)
        if isinstance(checked, AuthResult):
            return checked
        # Connect, StartTLS, service bind, search and user bind each get `timeout`;
        # the thread as a whole is capped a little above their sum.
        budget = 5 * self.settings.timeout + 1
        return await run_blocking(self.name, lambda: self._authenticate(checked, password), budget)

    async def close(self) -> None:
        """Nothing pooled: every login uses its own short connection."""

    # ------------------------------------------------------------ blocking part

    def _server(self) -> Server:
        tls = _ContextTls(self._tls_context, self._host) if self._tls else None
        return Server(
            self._host,
            port=self._port,
            use_ssl=self._use_ssl,
            tls=tls,
            connect_timeout=self.settings.timeout,
            get_info=NONE,  # no rootDSE/schema reads: one round trip less, no extra data
            allowed_referral_hosts=[],
        )

    def _connection(self, user: str | None, password: str | None) -> Connection:
        return Connection(
            self._server(),
            user=user,
            password=password,
            authentication=SIMPLE if user else ANONYMOUS,
            # ldap3 packs this into SO_RCVTIMEO as an integer: a float would raise there.
            receive_timeout=max(1, math.ceil(self.settings.timeout)),
            raise_exceptions=False,
            read_only=True,
            # Following a referral would send the user's password to another server.
            auto_referrals=False,
        )

    def _authenticate(self, name: str, password: str) -> AuthResult:
        try:
            if self.settings.bind_dn_template is not None:
                return self._direct_bind(self.settings.bind_dn_template, name, password)
            return self._search_then_bind(name, password)
        except _INPUT_ERRORS as exc:
            return AuthResult.failure(self.name, name, f"not usable here ({type(exc).__name__})")
        except (LDAPException, OSError) as exc:  # ssl.SSLError is an OSError
            raise BackendUnavailable(self.name, _describe(exc)) from None

    def _open(self, conn: Connection) -> None:
        """Connect (TLS for ldaps) and run StartTLS when configured; errors propagate."""
        conn.open(read_server_info=False)
        # start_tls() raises on a refusal or a bad certificate; never continue in cleartext.
        if self.settings.start_tls and not conn.start_tls(read_server_info=False):
            raise BackendUnavailable(self.name, "StartTLS failed")

    def _direct_bind(self, template: str, name: str, password: str) -> AuthResult:
        dn = template.replace(USER_PLACEHOLDER, escape_rdn(name))
        conn = self._connection(dn, password)
        try:
            self._open(conn)
            if not conn.bind(read_server_info=False):
                return self._refusal(name, conn.result)
            canonical = self._read_name(conn, dn, name) or name
            return AuthResult.success(self.name, canonical)
        finally:
            _unbind(conn)

    def _search_then_bind(self, name: str, password: str) -> AuthResult:
        service_password = self.settings.service_password
        conn = self._connection(
            self.settings.service_bind_dn,
            None if service_password is None else service_password.get_secret_value(),
        )
        try:
            self._open(conn)
            if not conn.bind(read_server_info=False):
                # A rejected service account is a configuration fault, not the user's.
                raise BackendUnavailable(
                    self.name, f"service bind refused: {conn.result.get('description')}"
                )
            found = self._find(conn, name)
            if isinstance(found, AuthResult):
                return found
            dn, canonical = found
            if not conn.rebind(user=dn, password=password, read_server_info=False):
                return self._refusal(canonical, conn.result)
            return AuthResult.success(self.name, canonical)
        finally:
            _unbind(conn)

    def _find(self, conn: Connection, name: str) -> tuple[str, str] | AuthResult:
        """(DN, canonical name) of the single entry matching the user, else a failure."""
        search_filter = self.settings.search_filter.replace(
            USER_PLACEHOLDER, escape_filter_chars(name)
        )
        conn.search(
            self.settings.search_base,
            search_filter,
            search_scope=SUBTREE,
            attributes=[self.settings.name_attribute],
            size_limit=2,  # two are enough to know the name is ambiguous
            time_limit=max(1, math.ceil(self.settings.timeout)),
        )
        code = conn.result.get("result")
        entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
        if code == _SIZE_LIMIT_EXCEEDED or len(entries) > 1:
            return AuthResult.failure(self.name, name, "ambiguous user: several entries match")
        if code != _SUCCESS:
            raise BackendUnavailable(self.name, f"search failed: {conn.result.get('description')}")
        if not entries:
            return AuthResult.failure(self.name, name, "unknown user")
        entry = entries[0]
        return entry["dn"], self._canonical(entry.get("attributes", {}), name) or name

    def _read_name(self, conn: Connection, dn: str, typed: str) -> str | None:
        """The bound entry's name attribute, when the directory lets the user read it."""
        try:
            conn.search(
                dn, "(objectClass=*)", search_scope=BASE, attributes=[self.settings.name_attribute]
            )
        except (LDAPException, OSError):
            # The bind already succeeded: a failed lookup of the spelling must not undo it.
            return None
        entries = [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
        return self._canonical(entries[0].get("attributes", {}), typed) if entries else None

    def _canonical(self, attributes: dict[str, Any], typed: str) -> str | None:
        """The stored spelling of the name: the value matching what was typed, else the first."""
        raw = attributes.get(self.settings.name_attribute)
        values = [v for v in (raw if isinstance(raw, list) else [raw]) if isinstance(v, str)]
        matching = [v for v in values if v.casefold() == typed.casefold()]
        for value in matching + values:
            try:
                return normalize_username(value)
            except ValueError:
                continue
        return None

    def _refusal(self, name: str, result: dict[str, Any]) -> AuthResult:
        code = result.get("result")
        if code in _USER_REFUSALS:
            return AuthResult.failure(self.name, name, _USER_REFUSALS[code])
        raise BackendUnavailable(self.name, f"bind failed: {result.get('description')}")


def _unbind(conn: Connection) -> None:
    """Close quietly: a failing unbind must not hide the login's outcome."""
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()


def _describe(exc: BaseException) -> str:
    """A short, password-free description of a connection or TLS failure."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
