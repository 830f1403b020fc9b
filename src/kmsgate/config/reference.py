"""How each setting is documented: its panel, its default as shown, the Markdown reference."""

from __future__ import annotations

from kmsgate.config.panels import PANELS
from kmsgate.config.settings import ServeSettings


def field_panel(name: str) -> str:
    """The help panel key of a settings field (ValueError when it names none or no known one)."""
    extra = ServeSettings.model_fields[name].json_schema_extra
    panel = extra.get("panel") if isinstance(extra, dict) else None
    if panel not in PANELS:
        raise ValueError(f"setting {name} has no help panel: add json_schema_extra=PANEL_...")
    return str(panel)


def default_text(name: str) -> str:
    """A field's default as the docs show it (Markdown)."""
    field = ServeSettings.model_fields[name]
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "doc_default" in extra:
        return str(extra["doc_default"])
    value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(f"`{item}`" for item in value)
    return f"`{value}`"


def settings_reference() -> str:
    """Markdown reference of every `serve` option, generated so it cannot drift."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `kmsgate.config.settings.ServeSettings` by `tools/gen_config_docs.py`.",
        "Each option is a command-line flag, a `KMSGATE_*` environment variable and a key of",
        "the TOML config file (`--config`, default `/etc/kmsgate/kmsgate.toml` when it exists).",
        "Precedence: config file < environment < command line. A list option is repeated on",
        "the command line (`--allow 10.0.0.0/8 --allow 192.168.0.0/16`); in the environment",
        "its values are comma- or space-separated (`KMSGATE_LISTEN=127.0.0.1:1688,[::1]:1688`),",
        "product patterns comma-separated only, as names hold spaces. The sections are the",
        "panels of `kmsgate serve --help` and of the kmsgate(1) man page.",
    ]
    by_panel: dict[str, list[str]] = {key: [] for key in PANELS}
    for name in ServeSettings.model_fields:
        by_panel[field_panel(name)].append(name)
    for key, names in by_panel.items():
        if not names:
            continue
        lines += [
            "",
            f"## {PANELS[key]}",
            "",
            "| flag | environment | file key | default | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name in names:
            field = ServeSettings.model_fields[name]
            flag = "--" + name.replace("_", "-")
            if field.annotation is bool and not name.startswith("no_"):
                flag = f"{flag} / --no-{name.replace('_', '-')}"
            lines.append(
                f"| `{flag}` | `KMSGATE_{name.upper()}` | `{name}` | {default_text(name)} "
                f"| {field.description} |"
            )
    return "\n".join(lines) + "\n"
