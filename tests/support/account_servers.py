"""Real account servers for the backend tests: OpenLDAP slapd and Dovecot POP3 on loopback.

Each runs from a generated config in its own temp dir, with a throwaway CA, and is stopped by pid.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.ports import free_port

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1
# The certificate names 127.0.0.1 and localhost only; this other loopback address reaches
# the same listeners under a name the certificate does not carry (hostname-mismatch tests).
OTHER_LOOPBACK = "127.0.0.2"
BOTH_LOOPBACKS = ("127.0.0.1", OTHER_LOOPBACK)


# ---------------------------------------------------------------- helpers


def missing(what: str, package: str) -> NoReturn:
    """Fail the test for a missing server program (skip only when KMSGATE_ALLOW_SKIP=1)."""
    message = f"{what} not found: apt-get install {package}"
    if os.environ.get("KMSGATE_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(message)


def require_binary(name: str, package: str) -> str:
    """Path of a program (PATH, then /usr/sbin and /sbin, which root's PATH may lack)."""
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )
    if path is None:
        missing(name, package)
    return path


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the test process dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _start(argv: list[str], log: Path, ports: list[tuple[str, int]]) -> subprocess.Popen[bytes]:
    """Start a foreground daemon and wait until every (host, port) accepts connections."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited at start:\n{log.read_text()[-3000:]}")
        if all(_port_open(host, port) for host, port in ports):
            return process
        time.sleep(0.05)
    _stop(process)
    raise RuntimeError(f"{argv[0]} did not listen in time:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM our own daemon (by its pid), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


# ---------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    """A test CA and a server certificate for localhost / 127.0.0.1 / ::1 signed by it."""

    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path) -> TlsFiles:
    """Generate the CA and server certificate (EC P-256, valid for a day) into `directory`."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kmsgate test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


def _tempdir(prefix: str) -> Path:
    """A temp dir that unprivileged daemon users may traverse (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


# ---------------------------------------------------------------- OpenLDAP


BASE_DN = "dc=example,dc=org"
PEOPLE_DN = f"ou=people,{BASE_DN}"
SERVICE_DN = f"cn=reader,{BASE_DN}"
SCHEMAS = ("core", "cosine", "inetorgperson")


def ssha(password: str) -> str:
    """OpenLDAP's {SSHA}: base64(SHA1(password + salt) + salt)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass
class SlapdServer:
    """A running slapd; `users` maps uid -> password (SSHA or cleartext in the directory)."""

    root: Path
    tls: TlsFiles
    ldap_port: int
    ldaps_port: int
    users: dict[str, str]
    service_password: str
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "slapd.log"

    @property
    def ldap_url(self) -> str:
        """Plain LDAP (StartTLS offered)."""
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        """LDAP over TLS."""
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def user_dn(self, uid: str) -> str:
        """DN of a person entry."""
        from ldap3.utils.dn import escape_rdn

        return f"uid={escape_rdn(uid)},{PEOPLE_DN}"


def _ldif_value(attribute: str, value: str) -> str:
    """`attr: value`, base64-encoded (`attr:: ...`) when LDIF requires it."""
    if value.isascii() and value.isprintable() and not value.startswith((" ", ":", "<")):
        return f"{attribute}: {value}"
    return f"{attribute}:: {base64.b64encode(value.encode()).decode()}"


def _person(dn: str, uid: str, password_value: str, *aliases: str) -> str:
    return "\n".join(
        [
            _ldif_value("dn", dn),
            "objectClass: inetOrgPerson",
            _ldif_value("uid", uid),
            *(_ldif_value("uid", alias) for alias in aliases),
            _ldif_value("cn", uid),
            "sn: Test",
            _ldif_value("userPassword", password_value),
        ]
    )


@contextlib.contextmanager
def running_slapd() -> Iterator[SlapdServer]:
    """slapd on 127.0.0.1 (ldap:// with StartTLS, ldaps://) with a small people tree."""
    slapd = require_binary("slapd", "slapd")
    slapadd = require_binary("slapadd", "slapd")
    root = _tempdir("kmsgate-slapd-")
    try:
        tls = make_tls(root)
        users = {
            "alice": "Wonderland-1",  # stored {SSHA}
            "bob": "pässwörd Bob",  # stored in cleartext, non-ASCII
            "doe, john": "comma-in-uid",  # DN special character in the RDN value
            "admin": "admin-secret",
            "twin": "twin-pass",  # exists twice (ambiguous for search-then-bind)
            "dave": "dave-pass",  # also has uid "d.smith" (multi-valued name attribute)
        }
        server = SlapdServer(
            root=root,
            tls=tls,
            ldap_port=free_port(hosts=BOTH_LOOPBACKS),
            ldaps_port=free_port(hosts=BOTH_LOOPBACKS),
            users=users,
            service_password=secrets.token_urlsafe(12),
        )
        (root / "db").mkdir()
        config = root / "slapd.conf"
        config.write_text(
            "\n".join(
                [
                    *(f"include /etc/ldap/schema/{name}.schema" for name in SCHEMAS),
                    f"pidfile {root}/slapd.pid",
                    f"argsfile {root}/slapd.args",
                    "modulepath /usr/lib/ldap",
                    "moduleload back_mdb",
                    f"TLSCACertificateFile {tls.ca}",
                    f"TLSCertificateFile {tls.cert}",
                    f"TLSCertificateKeyFile {tls.key}",
                    # Accept unauthenticated binds (DN + empty password) like many real
                    # directories do, so the tests prove the backend never sends one.
                    "allow bind_anon_dn",
                    "database mdb",
                    "maxsize 16777216",
                    f'suffix "{BASE_DN}"',
                    f'rootdn "cn=admin,{BASE_DN}"',
                    f"rootpw {secrets.token_urlsafe(12)}",
                    f"directory {root}/db",
                    "access to attrs=userPassword by anonymous auth by * none",
                    "access to * by * read",
                    "",
                ]
            )
        )
        entries = [
            f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\n"
            "o: Example\ndc: example",
            f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people",
            f"dn: ou=staff,{BASE_DN}\nobjectClass: organizationalUnit\nou: staff",
            f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\n"
            f"objectClass: simpleSecurityObject\ncn: reader\n"
            f"userPassword: {ssha(server.service_password)}",
        ]
        for uid, password in users.items():
            stored = password if uid == "bob" else ssha(password)
            aliases = ("d.smith",) if uid == "dave" else ()
            entries.append(_person(server.user_dn(uid), uid, stored, *aliases))
        entries.append(_person(f"uid=twin,ou=staff,{BASE_DN}", "twin", ssha("twin-pass")))
        ldif = root / "data.ldif"
        ldif.write_text("\n\n".join(entries) + "\n")
        out = subprocess.run(
            [slapadd, "-q", "-f", str(config), "-l", str(ldif)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"slapadd failed: {out.stderr or out.stdout}")
        urls = (
            f"ldap://127.0.0.1:{server.ldap_port}/ ldaps://127.0.0.1:{server.ldaps_port}/ "
            f"ldaps://{OTHER_LOOPBACK}:{server.ldaps_port}/"
        )
        # -d makes slapd stay in the foreground (our pid is slapd); 256 logs each operation.
        server.process = _start(
            [slapd, "-f", str(config), "-h", urls, "-d", "256"],
            server.log,
            [("127.0.0.1", server.ldap_port), ("127.0.0.1", server.ldaps_port)],
        )
        try:
            yield server
        finally:
            _stop(server.process)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ldapwhoami(server: SlapdServer, dn: str, password: str) -> subprocess.CompletedProcess[str]:
    """Run ldap-utils' ldapwhoami with a simple bind (independent of our client code)."""
    binary = require_binary("ldapwhoami", "ldap-utils")
    return subprocess.run(
        [binary, "-x", "-H", server.ldap_url, "-D", dn, "-w", password, "-o", "nettimeout=5"],
        capture_output=True,
        text=True,
        check=False,
        timeout=15,
    )


# ---------------------------------------------------------------- Dovecot POP3


_NO_AUTH_DELAY = """\
# Dovecot waits 2 s after each failed login; the tests make many on purpose.
auth_failure_delay = 0
"""
_NO_AUTH_PENALTY = """\
# Dovecot also slows down repeated failures per IP (anvil's auth penalty, up to 15 s);
# a socket the auth process cannot open turns that off (Dovecot's documented switch).
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""


@dataclass
class DovecotServer:
    """A running Dovecot with POP3 (STLS offered) and POP3S; `users` maps name -> password."""

    root: Path
    tls: TlsFiles
    pop3_port: int
    pop3s_port: int
    users: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    argv: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log = self.root / "dovecot.log"

    def start(self) -> None:
        """(Re)start Dovecot with its config, on the same ports."""
        self.process = _start(
            self.argv, self.log, [("127.0.0.1", self.pop3_port), ("127.0.0.1", self.pop3s_port)]
        )

    def stop(self) -> None:
        """Stop Dovecot (an outage of the account server); start() brings it back."""
        if self.process is not None:
            _stop(self.process)


def _existing_user(*names: str) -> pwd.struct_passwd:
    for name in names:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"none of the accounts {names} exists")


@contextlib.contextmanager
def running_dovecot(
    *, stock_throttling: bool = False, login_trusted_networks: str | None = None
) -> Iterator[DovecotServer]:
    """`dovecot -F` with a passwd-file, POP3 + STLS and POP3S on 127.0.0.1, no auth delay.

    stock_throttling keeps Dovecot's defaults instead: a failed login answers after
    auth_failure_delay (2 s), and anvil delays the next logins from the same address.
    login_trusted_networks: front ends allowed to name their client (XCLIENT).
    """
    dovecot = require_binary("dovecot", "dovecot-pop3d")
    if not Path("/usr/lib/dovecot/pop3").exists():
        missing("/usr/lib/dovecot/pop3", "dovecot-pop3d")
    root = _tempdir("kmsgate-dovecot-")
    try:
        tls = make_tls(root)
        users = {
            "alice": "Wonderland-1",
            "bob": "pässwörd Bob",
            "admin": "admin-secret",
            "carol@example.org": "carol-pass",  # for username_template
        }
        server = DovecotServer(
            root=root,
            tls=tls,
            pop3_port=free_port(hosts=BOTH_LOOPBACKS),
            pop3s_port=free_port(hosts=BOTH_LOOPBACKS),
            users=users,
        )
        internal = _existing_user("dovecot", "nobody")
        login = _existing_user("dovenull", "nobody")
        mail_owner = _existing_user("nobody")
        mail = root / "mail"
        mail.mkdir()
        os.chown(mail, mail_owner.pw_uid, mail_owner.pw_gid)
        passwd = root / "users"
        passwd.write_text("".join(f"{name}:{{PLAIN}}{pw}\n" for name, pw in users.items()))
        passwd.chmod(0o644)  # read by the auth process, which runs as the internal user
        throttling = "" if stock_throttling else _NO_AUTH_DELAY
        anvil = "" if stock_throttling else _NO_AUTH_PENALTY
        trusted = (
            f"login_trusted_networks = {login_trusted_networks}\n" if login_trusted_networks else ""
        )
        config = root / "dovecot.conf"
        config.write_text(
            f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {server.log}
protocols = pop3
listen = 127.0.0.1, {OTHER_LOOPBACK}
default_internal_user = {internal.pw_name}
default_login_user = {login.pw_name}
ssl = yes
ssl_cert = <{tls.cert}
ssl_key = <{tls.key}
# Loopback counts as secure anyway; say it so the "plain" mode test is explicit.
disable_plaintext_auth = no
auth_mechanisms = plain
# Empty: every character allowed, so odd names reach the passdb lookup instead of
# being refused early by Dovecot (which also delays that refusal by half a second).
auth_username_chars =
{throttling}mail_location = maildir:{mail}/%u
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = static
  args = uid={mail_owner.pw_uid} gid={mail_owner.pw_gid} home={mail}/%u
}}
{anvil}{trusted}service pop3-login {{
  inet_listener pop3 {{
    port = {server.pop3_port}
  }}
  inet_listener pop3s {{
    port = {server.pop3s_port}
    ssl = yes
  }}
}}
"""
        )
        server.argv = [dovecot, "-F", "-c", str(config)]
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
