"""`kmsgate config show` (values, sources, masking) and `kmsgate config check` (file problems)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import kmsgate.config.loading
from kmsgate.cli import config_cmd, serve
from kmsgate.cli.config_cmd import check_text, mask_url
from kmsgate.config.settings import ServeSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kmsgate.toml"
runner = CliRunner()


def make_app(*modules: Any) -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:
        """Test application."""

    for module in modules or (config_cmd,):
        app.add_typer(module.app)
    return app


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KMSGATE_* variables and no /etc/kmsgate/kmsgate.toml from the machine running tests."""
    import os

    for key in list(os.environ):
        if key.upper().startswith("KMSGATE_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr(kmsgate.config.loading, "DEFAULT_CONFIG_FILE", tmp_path / "absent.toml")


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(make_app(), list(args))
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, text: str, name: str = "kmsgate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def show_json(*args: str) -> dict[str, Any]:
    code, out, err = invoke("config", "show", "--json", *args)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- show


def test_show_reports_value_and_source_with_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        'client_count = 30\nlcid = 1031\nlisten = ["127.0.0.1:1"]\nrenewal_interval = 500\n',
    )
    monkeypatch.setenv("KMSGATE_LCID", "1033")
    monkeypatch.setenv("KMSGATE_CLIENT_COUNT", "40")
    monkeypatch.setenv("kmsgate_window", "600")  # pydantic-settings matches case-insensitively
    report = show_json("--config", str(path), "--client-count", "50", "--deny", "10.9.0.0/16")
    got = {name: (item["value"], item["source"]) for name, item in report["settings"].items()}
    assert report["config_file"] == str(path)
    assert got["client_count"] == (50, "cli")  # cli beats env and file
    assert got["lcid"] == (1033, "env")  # env beats file
    assert got["window"] == (600, "env")
    assert got["listen"] == (["127.0.0.1:1"], "file")
    assert got["renewal_interval"] == (500, "file")
    assert got["deny"] == (["10.9.0.0/16"], "cli")
    assert got["activation_interval"] == (120, "default")
    assert got["upstream"] == (None, "default")
    assert set(got) == set(ServeSettings.model_fields)


def test_show_text_is_one_line_per_setting(tmp_path: Path) -> None:
    code, out, _ = invoke("config", "show", "--no-ndr64", "--listen", "127.0.0.1:1688",
                          "--listen", "[::1]:1688")  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "# config file: none"
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:]}
    assert set(rows) == set(ServeSettings.model_fields)
    assert rows["ndr64"] == ["cli", "false"]
    assert rows["listen"] == ["cli", "127.0.0.1:1688, [::1]:1688"]
    assert rows["btfn"] == ["default", "true"]
    assert rows["lcid"] == ["default", "1033"]


def test_show_uses_the_default_config_file_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = write(tmp_path, "window = 900\n", "etc.toml")
    monkeypatch.setattr(kmsgate.config.loading, "DEFAULT_CONFIG_FILE", default)
    report = show_json()
    assert report["config_file"] == str(default)
    assert report["settings"]["window"] == {"value": 900, "source": "file"}


def test_show_masks_every_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        'db = "postgresql://kms:Pa55@word@db.example.org/kms"\n'
        "[accounts]\n"
        'backend = "ldap"\n'
        'url = "ldaps://ldap.example.org"\n'
        'search_base = "ou=people,dc=example,dc=org"\n'
        'service_bind_dn = "cn=svc,dc=example,dc=org"\n'
        'service_password = "LdapSecret9"\n',
    )
    monkeypatch.setenv("KMSGATE_DNS_TSIG_SECRET", "VHNpZ1NlY3JldA==")
    monkeypatch.setenv("KMSGATE_DNS_TSIG_NAME", "update-key.")
    monkeypatch.setenv("KMSGATE_UPSTREAM", "kms.example.org:1688")
    for extra in ([], ["--json"]):
        code, out, err = invoke("config", "show", "--config", str(path), *extra)
        assert code == 0, err
        for secret in ("Pa55", "word@", "LdapSecret9", "VHNpZ1NlY3JldA"):
            assert secret not in out
        assert "postgresql://kms:***@db.example.org/kms" in out
    report = show_json("--config", str(path))["settings"]
    assert report["dns_tsig_secret"] == {"value": "***", "source": "env"}
    assert report["accounts"]["value"]["service_password"] == "***"
    assert report["accounts"]["value"]["service_bind_dn"] == "cn=svc,dc=example,dc=org"
    assert report["accounts"]["source"] == "file"
    # A number is no secret, whatever its name says.
    assert report["min_password_length"]["value"] == 12


def test_show_masks_the_sql_backend_url_given_as_json_flag() -> None:
    accounts = json.dumps(
        {"backend": "sql", "url": "postgresql://reader:SqlPw1@h/accounts",
         "query": "SELECT hash FROM accounts WHERE name = :username"}
    )  # fmt: skip
    report = show_json("--accounts", accounts)["settings"]["accounts"]
    assert report["source"] == "cli"
    assert report["value"]["url"] == "postgresql://reader:***@h/accounts"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss:w/rd@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db?password=x&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:////var/lib/kmsgate/kmsgate.db", "sqlite:////var/lib/kmsgate/kmsgate.db"),
        ("ldaps://ldap.example.org:636", "ldaps://ldap.example.org:636"),
        ("kms.example.org:1688", "kms.example.org:1688"),
    ],
)  # fmt: skip
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_show_refuses_bad_settings_like_serve(tmp_path: Path) -> None:
    code, _, err = invoke("config", "show", "--lcid", "5")
    assert code == 2 and err.startswith("error: lcid:") and "LCID" in err
    bad = write(tmp_path, "window = 600\nlisten = [,]\n")
    code, _, err = invoke("config", "show", "--config", str(bad))
    assert code == 2 and f"{bad}: TOML syntax error" in err and "line 2" in err
    code, _, err = invoke("config", "show", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "does not exist" in err


def test_show_accepts_every_serve_option() -> None:
    def options(app: typer.Typer, *path: str) -> set[str]:
        command: Any = typer.main.get_command(app)
        for name in path:
            command = command.commands[name]
        return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}

    serve_opts = options(make_app(serve), "serve")
    show_opts = options(make_app(), "config", "show")
    assert show_opts == serve_opts | {"--json"}


# ---------------------------------------------------------------- check


def test_check_ok(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = ["127.0.0.1:1688"]\n[accounts]\nbackend = "local"\n')
    code, out, err = invoke("config", "check", str(path))
    assert (code, out.strip(), err) == (0, f"{path}: ok", "")


def test_check_reports_syntax_errors_with_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'client_count = 30\nlisten = ["127.0.0.1:1688"\nwindow = 5\n')
    code, _, err = invoke("config", "check", str(path))
    assert code == 1
    assert re.match(rf"error: {re.escape(str(path))}:3:1: TOML syntax error: ", err), err


def test_check_names_each_bad_key_and_its_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "client-count = 30\n"
        'lisen = ["127.0.0.1:1688"]\n'
        "lcid = 9999\n"
        'listen = ["127.0.0.1:1688", "bogus"]\n'
        "activation_interval = 5\n"
        "[accounts]\n"
        'backend = "ldap"\n'
        'url = "http://ldap.example.org"\n'
        'search_base = "ou=people,dc=example,dc=org"\n'
        "colour = 1\n",
    )
    code, out, err = invoke("config", "check", str(path))
    assert code == 1 and "ok" not in out
    lines = err.splitlines()
    expected = [
        ":1: client-count: unknown key (did you mean client_count?",
        ":2: lisen: unknown key (did you mean listen?)",
        ":3: lcid: 9999 is not a Windows LCID",
        ":4: listen: listen address 'bogus'",
        ":5: activation_interval: 5 is below the minimum 15",
        ":8: accounts.url: url must look like ldap://",
        ":10: accounts.colour: unknown key",
    ]
    assert len(lines) == len(expected), err
    for line, needle in zip(lines, expected, strict=True):
        assert line.startswith(f"error: {path}{needle}"), (line, needle)


def test_check_names_keys_in_cross_field_problems(tmp_path: Path) -> None:
    path = write(tmp_path, 'web_cert = "/etc/kmsgate/cert.pem"\n')
    code, _, err = invoke("config", "check", str(path))
    assert code == 1 and err.strip() == f"error: {path}: web_cert and web_key go together"


def test_check_ignores_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSGATE_LCID", "not-a-number")
    path = write(tmp_path, "window = 600\n")
    assert invoke("config", "check", str(path))[0] == 0


def test_check_unreadable_files(tmp_path: Path) -> None:
    code, _, err = invoke("config", "check", str(tmp_path / "nope.toml"))
    assert code == 1 and "cannot read" in err
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"window = 1\xff\n")
    code, _, err = invoke("config", "check", str(binary))
    assert code == 1 and "not UTF-8" in err


def test_check_reports_an_unknown_account_backend(tmp_path: Path) -> None:
    path = write(tmp_path, 'accounts = { backend = "nis" }\n')
    code, _, err = invoke("config", "check", str(path))
    assert code == 1
    expected = "accounts.backend: 'nis' is not one of local, ldap, pop3, sql"
    assert err.strip() == f"error: {path}:1: {expected}"


# ---------------------------------------------------------------- the example file

SETTING = re.compile(r"^#(?=[a-z0-9_]+ = |\[accounts\]$)")


def uncommented(text: str) -> str:
    """The example with every `#key = value` line (and `#[accounts]`) switched on."""
    return "\n".join(SETTING.sub("", line) for line in text.splitlines()) + "\n"


def test_example_config_is_valid_as_shipped_and_fully_uncommented(tmp_path: Path) -> None:
    code, out, err = invoke("config", "check", str(EXAMPLE))
    assert code == 0 and out.strip().endswith(": ok"), err
    active = write(tmp_path, uncommented(EXAMPLE.read_text()))
    code, _, err = invoke("config", "check", str(active))
    assert code == 0, err


def test_example_config_covers_every_key_with_its_default() -> None:
    data = tomllib.loads(uncommented(EXAMPLE.read_text()))
    assert set(data) == set(ServeSettings.model_fields)
    # Defaults that depend on the machine (user, host name) are shown with a typical value.
    for name in set(ServeSettings.model_fields) - {"data_dir", "node_name", "accounts"}:
        field = ServeSettings.model_fields[name]
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if default is not None:
            assert data[name] == default, name
    assert data["accounts"] == {"backend": "local"}


def test_example_account_backends_are_valid() -> None:
    blocks: list[list[str]] = []
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("## backend = "):
            blocks.append([])
        if blocks and re.match(r"^## [a-z0-9_]+ = ", line):
            blocks[-1].append(line[3:])
    assert {block[0] for block in blocks} == {
        'backend = "ldap"',
        'backend = "pop3"',
        'backend = "sql"',
    }
    for block in blocks:
        assert check_text("[accounts]\n" + "\n".join(block) + "\n", "example") == [], block
