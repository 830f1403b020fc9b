"""POP3 accounts: USER/PASS against a mail server over POP3S, STLS or plaintext."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import poplib
import re

from kmsgate.access.accounts.base import (
    USER_PLACEHOLDER,
    AuthResult,
    BackendUnavailable,
    Pop3Settings,
    client_tls_context,
    is_loopback,
    precheck,
    run_blocking,
)
from kmsgate.net import canonical_address

log = logging.getLogger("kmsgate.access.accounts.pop3")

# RFC 3206 response codes, e.g. "-ERR [SYS/TEMP] ...". SYS/* and IN-USE are the server's
# trouble (IN-USE may even follow a *correct* password), so they must not read as "wrong
# password"; but neither proves the password either, so they are not a success.
_CODE = re.compile(rb"^-ERR \[([A-Z/-]+)\]")
_UNAVAILABLE_CODES = {b"SYS/TEMP", b"SYS/PERM", b"IN-USE"}
# Characters that would end the PASS line and start another command (command injection).
_LINE_BREAKERS = frozenset("\r\n\x00")
# RFC 1939 caps a reply line at 512 octets; read no more than that for the XCLIENT answer.
MAX_REPLY_LINE = 512


class Pop3Backend:
    """Logs in with USER/PASS and quits; the mailbox is never read."""

    name: str = "pop3"

    def __init__(self, settings: Pop3Settings) -> None:
        """Prepare the TLS context (nothing is contacted yet)."""
        self.settings = settings
        self._context = client_tls_context(settings.ca_file, settings.verify_tls)
        if settings.mode != "plain" and not settings.verify_tls:
            log.warning("POP3 %s: TLS certificate verification is OFF", settings.host)
        if settings.mode == "plain" and not is_loopback(settings.host):
            log.warning("POP3 %s: passwords travel in cleartext (use pop3s or stls)", settings.host)

    async def authenticate(
        self, username: str, password: str, *, client_address: str | None = None
    ) -> AuthResult:
        """Try USER/PASS; BackendUnavailable when the server cannot be asked.

        With `forward_client_address`, XCLIENT first tells the server the portal client's
        address, so that its per-address penalty for failed logins hits that client only.
        """
        checked = precheck(self.name, username, password)
        if isinstance(checked, AuthResult):
            return checked
        if _LINE_BREAKERS.intersection(password):
            return AuthResult.failure(self.name, checked, "password has CR/LF/NUL")
        forwarded = None
        if self.settings.forward_client_address and client_address is not None:
            forwarded = _xclient_address(client_address)
        # Connect, greeting, STLS, XCLIENT, USER and PASS each get `timeout` from the socket.
        budget = 3 * self.settings.timeout + 1
        return await run_blocking(
            self.name, lambda: self._login(checked, password, forwarded), budget
        )

    async def close(self) -> None:
        """Nothing pooled: every login uses its own connection."""

    def _connect(self) -> poplib.POP3:
        settings = self.settings
        port = settings.effective_port
        if settings.mode == "pop3s":
            return poplib.POP3_SSL(
                settings.host, port, timeout=settings.timeout, context=self._context
            )
        client = poplib.POP3(settings.host, port, timeout=settings.timeout)
        if settings.mode == "stls":
            try:
                # Raises when STLS is not offered: never fall back to cleartext.
                client.stls(context=self._context)
            except BaseException:
                # A failed handshake leaves poplib holding a detached socket: closing
                # it raises EBADF, which must not replace the certificate error.
                with contextlib.suppress(OSError):
                    client.close()
                raise
        return client

    def _login(self, name: str, password: str, forwarded: str | None) -> AuthResult:
        login = self.settings.username_template.replace(USER_PLACEHOLDER, name)
        try:
            client = self._connect()
        except (OSError, poplib.error_proto) as exc:  # ssl.SSLError and timeouts are OSErrors
            raise BackendUnavailable(self.name, _describe(exc)) from None
        try:
            if forwarded is not None:
                self._xclient(client, forwarded)
            try:
                client.user(login)
                client.pass_(password)
            except poplib.error_proto as exc:
                return self._refusal(name, exc)
            except OSError as exc:
                raise BackendUnavailable(self.name, _describe(exc)) from None
            with contextlib.suppress(OSError, poplib.error_proto):
                client.quit()
            return AuthResult.success(self.name, name)
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _xclient(self, client: poplib.POP3, address: str) -> None:
        """Name the client whose login follows (Dovecot's XCLIENT, for trusted front ends)."""
        # Dovecot says "+OK [XCLIENT] ..." in its greeting to trusted front ends only, and
        # answers XCLIENT from anyone else with "+OK ... ignoring": check the greeting.
        if b"[XCLIENT]" not in client.getwelcome():
            # Going on would put every user back behind one shared penalty: make it loud.
            raise BackendUnavailable(
                self.name,
                "the server does not offer XCLIENT to kmsgate: is kmsgate's address in "
                "its login_trusted_networks?",
            )
        # poplib has no public way to send an extension command: write the line ourselves.
        try:
            client.sock.sendall(f"XCLIENT ADDR={address}\r\n".encode("ascii"))
            reply = client.file.readline(MAX_REPLY_LINE)
        except OSError as exc:
            raise BackendUnavailable(self.name, _describe(exc)) from None
        if not reply.startswith(b"+OK"):
            raise BackendUnavailable(self.name, f"XCLIENT refused: {_printable(reply.rstrip())}")

    def _refusal(self, name: str, exc: poplib.error_proto) -> AuthResult:
        response = exc.args[0] if exc.args else b""
        if isinstance(response, str):  # poplib's own errors ('-ERR EOF', 'line too long')
            raise BackendUnavailable(self.name, response[:200])
        match = _CODE.match(response)
        if match and match.group(1) in _UNAVAILABLE_CODES:
            raise BackendUnavailable(self.name, _printable(response))
        # Dovecot and most servers answer a wrong password and an unknown user alike.
        return AuthResult.failure(self.name, name, f"login refused: {_printable(response)}")


def _xclient_address(text: str) -> str | None:
    """The address as XCLIENT takes it (an IP literal, IPv6 without brackets); None if none."""
    address = canonical_address(text).partition("%")[0]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return None  # not an IP (no peer address): nothing trustworthy to forward
    return address


def _printable(response: bytes) -> str:
    """A server line made safe for the audit log (no control characters, bounded)."""
    text = response.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)[:200]


def _describe(exc: BaseException) -> str:
    """A short description of a connection, protocol or TLS failure."""
    if isinstance(exc, poplib.error_proto) and exc.args:
        detail = exc.args[0]
        text = _printable(detail) if isinstance(detail, bytes) else str(detail)
    else:
        text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
