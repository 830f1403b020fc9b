"""Settings precedence (file < env < CLI) and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kmsgate.config.addresses import parse_listen
from kmsgate.config.loading import load_settings
from kmsgate.config.settings import ServeSettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kmsgate.toml"
    path.write_text(text)
    return path


def test_defaults_listen_on_both_stacks() -> None:
    settings = load_settings()
    assert settings.listen_addresses == [("0.0.0.0", 1688), ("::", 1688)]
    assert (settings.activation_interval, settings.renewal_interval) == (120, 10080)
    assert settings.ndr64 and settings.btfn and settings.epid == ["random"]


def test_file_then_env_then_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        'client_count = 30\nrenewal_interval = 500\nlcid = 1031\nlisten = ["127.0.0.1:1"]\n',
    )
    monkeypatch.setenv("KMSGATE_CLIENT_COUNT", "40")
    monkeypatch.setenv("KMSGATE_LISTEN", "127.0.0.2:2, [::1]:3")
    settings = load_settings(path, client_count=50, ndr64=False)
    assert settings.client_count == 50  # CLI beats env and file
    assert settings.listen_addresses == [("127.0.0.2", 2), ("::1", 3)]  # env beats file
    assert settings.renewal_interval == 500  # file beats default
    assert settings.lcid == 1031
    assert settings.ndr64 is False


def test_env_booleans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMSGATE_BTFN", "false")
    assert load_settings().btfn is False


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("hwid", "xyz", "16 hexadecimal digits"),
        ("epid", "12345", "does not look like"),
        ("lcid", 9999, "not a Windows LCID"),
        ("activation_interval", 5, "greater than or equal to 15"),
        ("listen", ["nonsense"], "ADDR:PORT"),
        ("listen", ["127.0.0.1:70000"], "invalid port"),
        ("idle_timeout", 0, "greater than 0"),
    ],
)
def test_invalid_values_name_the_key(key: str, value: object, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_settings(**{key: value})
    assert key in str(info.value) and needle in str(info.value)


def test_unknown_file_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="clientcount"):
        load_settings(write(tmp_path, "clientcount = 3\n"))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1688", ("0.0.0.0", 1688)),
        ("[::]:1688", ("::", 1688)),
        ("10.1.2.3:99", ("10.1.2.3", 99)),
        ("localhost:5", ("localhost", 5)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


def test_settings_model_fields_all_have_descriptions() -> None:
    assert all(field.description for field in ServeSettings.model_fields.values())


def test_configuration_reference_is_current() -> None:
    from kmsgate.config.reference import settings_reference

    doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == settings_reference(), "run tools/gen_config_docs.py"


def test_every_setting_is_a_serve_flag() -> None:
    from kmsgate.cli.serve import settings_parameters

    names = {p.name for p in settings_parameters(ServeSettings)}
    assert names == set(ServeSettings.model_fields) | {"config"}
