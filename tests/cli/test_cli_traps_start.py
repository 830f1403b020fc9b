"""Trap 5: a quiet start, with everything validated before anything starts."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import (
    clean_env,
    kmsgate,
    log_records,
    start_serve,
    stop_serve,
    wait_listening,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

NOTHING_STARTED = ("record writer", "alembic", "Running upgrade", "listening on")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_a_normal_start_logs_only_kmsgate_lines_with_readable_addresses(tmp_path: Path) -> None:
    port, web = free_port(), free_port()
    data = tmp_path / "data"
    proc = start_serve("--listen", f"127.0.0.1:{port}", "--web", f"127.0.0.1:{web}",
                       "--data-dir", str(data), tmp_path=tmp_path)  # fmt: skip
    try:
        wait_listening(proc, port)
        wait_listening(proc, web)
    finally:
        code, out, err = stop_serve(proc)
    assert code == 0, err
    assert out == ""
    expected = [
        rf"store {re.escape(str(data))}/kmsgate\.db \(SQLite; activation rows bound "
        r"(from C \(abi3\)|by the sqlite3 module \(.+\)), folded in (C|Python) \(.+\)\)",
        rf"listening on 127\.0\.0\.1:{port}",
        r"host build \d+ \(.+\), LCID \d+, HWID [0-9A-F]{16}, NDR64 on, BTFN on",
        r"host key windows \(Windows Server 2025, group 4919\): ePID \S+; 6 Office host keys "
        r"\(`kmsgate identity show`\)",
        r"cipher: (C accelerator \(abi3, (aes-ni|tables) rounds\)|pure Python \(.+\))",
        r"wire layout: (C \(abi3\)|Python \(.+\))",
        r"hot path: (compiled \(mypyc\): \d+ modules|Python source \(.+\))",
        rf"web dashboard on http://127\.0\.0\.1:{web}/",
        r"no administrator account yet: create one with `kmsgate users add NAME --admin` .*",
        r"stopping: draining 0 connections",
        r"stopped after 0 activations, 0 refusals",
    ]
    records = log_records(err)
    # The one warning is the first-admin hint; everything else is kmsgate's INFO lines.
    assert {(level, logger) for level, logger, _ in records} <= {
        ("INFO", "kmsgate.server"),
        ("INFO", "kmsgate.store"),
        ("WARNING", "kmsgate.server"),
    }, records
    messages = [msg for _, _, msg in records]
    unmatched = list(messages)
    for pattern in expected:
        hits = [m for m in unmatched if re.fullmatch(pattern, m)]
        assert len(hits) == 1, (pattern, messages)
        unmatched.remove(hits[0])
    assert unmatched == [], unmatched
    assert "('" not in err and "alembic" not in err and "uvicorn" not in err


def test_debug_level_still_shows_the_library_lines(tmp_path: Path) -> None:
    # The quiet start hides routine library lines at info; debug is there to see them.
    port = free_port()
    proc = start_serve("--listen", f"127.0.0.1:{port}", "--web", "127.0.0.1:0",
                       "--data-dir", str(tmp_path / "data"), "--log-level", "debug",
                       tmp_path=tmp_path)  # fmt: skip
    try:
        wait_listening(proc, port)
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err
    assert " INFO alembic.runtime.migration: Running upgrade" in err
    assert " INFO kmsgate.web: Uvicorn running on" in err
    assert "uvicorn.error" not in err


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_addresses_are_bracketed(tmp_path: Path) -> None:
    port, web = free_port(), free_port()
    proc = start_serve("--listen", f"[::1]:{port}", "--web", f"[::1]:{web}",
                       "--data-dir", str(tmp_path / "data"), tmp_path=tmp_path)  # fmt: skip
    try:
        wait_listening(proc, port, host="::1")
        wait_listening(proc, web, host="::1")
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err
    messages = [msg for _, _, msg in log_records(err)]
    assert f"listening on [::1]:{port}" in messages
    assert f"web dashboard on http://[::1]:{web}/" in messages


def assert_refused_before_start(
    done: subprocess.CompletedProcess[str], code: int, line: str, data: Path
) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr == f"error: {line}\n"
    assert done.stdout == ""
    assert not data.exists()  # no database, no migration, no writer, no session key
    assert not any(word in done.stderr for word in NOTHING_STARTED)


@pytest.mark.parametrize(
    ("listen", "line"),
    [
        ("10.0.0.300:1688", "listen: listen address '10.0.0.300:1688': '10.0.0.300' is no host "
         "name or IP address"),
        ("127.0.0.1:16888x", "listen: listen address '127.0.0.1:16888x' has an invalid port"),
        ("127.0.0.1:99999", "listen: listen address '127.0.0.1:99999' has an invalid port"),
        ("127.0.0.1", "listen: listen address '127.0.0.1' must look like ADDR:PORT or "
         "[ADDR]:PORT"),
        ("192.0.2.1:1688", "listen: cannot listen on 192.0.2.1:1688: 192.0.2.1 is not an "
         "address of this machine"),
    ],
)  # fmt: skip
def test_a_mistyped_listen_address_is_one_line_and_status_2(
    listen: str, line: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    done = kmsgate("serve", "--listen", listen, "--data-dir", str(data), tmp_path=tmp_path)
    assert_refused_before_start(done, 2, line, data)


def test_a_busy_port_is_found_before_anything_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = kmsgate("serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
                       tmp_path=tmp_path)  # fmt: skip
        web = kmsgate("serve", "--listen", "127.0.0.1:0", "--web", f"127.0.0.1:{port}",
                      "--data-dir", str(data), tmp_path=tmp_path)  # fmt: skip
    where = f"127.0.0.1:{port}"
    assert_refused_before_start(done, 1, f"listen: cannot listen on {where}: the port is in use",
                                data)  # fmt: skip
    assert_refused_before_start(web, 1, f"web: cannot listen on {where}: the port is in use", data)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--web-cert", "/nonexistent/c.pem", "--web-key", "/nonexistent/k.pem"],
         "web_cert: cannot read /nonexistent/c.pem: No such file or directory"),
        (["--user", "no-such-user-kmsgate"],
         "user: no user named 'no-such-user-kmsgate' on this machine"),
        (["--user", "root", "--group", "no-such-group-kmsgate"],
         "group: no group named 'no-such-group-kmsgate' on this machine"),
        (["--group", "root"], "group: --group needs --user"),
        (["--log-file", "/nonexistent/dir/kmsgate.log"],
         "log_file: cannot write /nonexistent/dir/kmsgate.log: No such file or directory"),
        (["--gateway", "--accounts", '{"backend": "ldap", "url": "ldaps://ldap.example.org", '
          '"search_base": "o=x", "ca_file": "/nonexistent/ca.pem"}'],
         "accounts.ca_file: cannot load /nonexistent/ca.pem: No such file or directory"),
        (["--dns-publish", "--dns-domain", "example.org", "--dns-server", "127.0.0.1:53",
          "--dns-tsig-name", "k", "--dns-tsig-secret", "not base64!"],
         "dns_tsig_secret: the TSIG secret is not valid base64: Invalid base64-encoded string: "
         "number of data characters (9) cannot be 1 more than a multiple of 4"),
    ],
)  # fmt: skip
def test_files_users_and_backends_are_checked_before_anything_starts(
    args: list[str], line: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    done = kmsgate("serve", "--listen", "127.0.0.1:0", "--data-dir", str(data), *args,
                   tmp_path=tmp_path)  # fmt: skip
    assert_refused_before_start(done, 2, line, data)


def test_a_certificate_and_key_that_do_not_match_are_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    data = tmp_path / "data"
    done = kmsgate("serve", "--listen", "127.0.0.1:0", "--data-dir", str(data),
                   "--web-cert", str(cert), "--web-key", str(key), tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"error: web_cert, web_key: {cert} and {key} are not a PEM certificate and its private key"
    )
    assert len(done.stderr.splitlines()) == 1
    assert not data.exists()


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = kmsgate("serve", "--listen", "192.0.2.1:1688", "--user", "no-such-user-kmsgate",
                   "--data-dir", str(data), tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: user: no user named 'no-such-user-kmsgate' on this machine",
        "error: listen: cannot listen on 192.0.2.1:1688: 192.0.2.1 is not an address of this "
        "machine",
    ]


def test_host_bits_are_a_warning_in_the_start_log(tmp_path: Path) -> None:
    port = free_port()
    proc = start_serve("--listen", f"127.0.0.1:{port}", "--no-web", "--allow", "127.0.0.1/8",
                       "--deny", "10.9.9.9/16", "--data-dir", str(tmp_path / "data"),
                       tmp_path=tmp_path)  # fmt: skip
    try:
        wait_listening(proc, port)
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err
    warnings = [(logger, msg) for level, logger, msg in log_records(err) if level == "WARNING"]
    assert warnings == [
        ("kmsgate.server", "allow: 127.0.0.1/8 has host bits set; using the network 127.0.0.0/8"),
        ("kmsgate.server", "deny: 10.9.9.9/16 has host bits set; using the network 10.9.0.0/16"),
    ]


def test_the_config_file_of_the_environment_is_validated_the_same(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = clean_env(tmp_path, KMSGATE_LISTEN="127.0.0.1:1688,10.0.0.300:1688")
    done = kmsgate("serve", "--data-dir", str(data), tmp_path=tmp_path, env=env)
    assert_refused_before_start(
        done, 2, "listen: listen address '10.0.0.300:1688': '10.0.0.300' is no host name "
        "or IP address", data,
    )  # fmt: skip
