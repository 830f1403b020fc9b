"""`kmsgate identity show`: the host's HWID and each held host key's ePID and products."""

from __future__ import annotations

import random
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from kmsgate.catalog.loading import load_catalog
from kmsgate.cli.common import ConfigOption, DataDirOption, JsonOption, fail, print_json
from kmsgate.config.loading import load_settings
from kmsgate.config.settings import ServeSettings
from kmsgate.server.identity import IdentityError, build_identity, read_identity_file

app = typer.Typer(
    name="identity", help="The host's identity (HWID, ePIDs) kept across restarts.",
    no_args_is_help=True,
)  # fmt: skip


def _settings(config: Path | None, data_dir: Path | None, identity_file: Path | None) -> Any:
    try:
        return load_settings(config, data_dir=data_dir, identity_file=identity_file)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc), 2) from None


def describe(settings: ServeSettings) -> dict[str, Any]:
    """What a host with these settings answers, read from (never written to) its file."""
    path = settings.identity_path
    if read_identity_file(path) is None:
        raise IdentityError(f"no identity saved in {path} yet: `kmsgate serve` creates it")
    identity = build_identity(
        load_catalog(settings.catalog),
        epid=settings.epid,
        hwid=settings.hwid,
        lcid=settings.lcid,
        host_build=settings.host_build,
        ndr64=settings.ndr64,
        rng=random.SystemRandom(),
        today=datetime.now(UTC).date(),
        path=path,
        save=False,
    )
    return {"identity_file": str(path), **identity.describe()}


def _text(info: dict[str, Any]) -> str:
    lines = [
        f"identity file: {info['identity_file']}",
        f"host build:    {info['host_build']} ({info['host_build_name']}), "
        f"platform {info['platform_id']:05d}",
        f"LCID:          {info['lcid']}",
        f"HWID:          {info['hwid']}",
    ]
    for key in info["keys"]:
        note = {"generated": "not saved yet: new at the next start", "saved": "saved"}.get(
            key["source"], "configured"
        )
        lines += [
            "",
            f"{key['name']}: {key['epid']}",
            f"  host key {key['csvlk']} (group {key['group_id']}), {note}",
            *textwrap.wrap(
                f"covers {len(key['products'])}: {', '.join(key['products'])}",
                width=78,
                initial_indent="  ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            ),
        ]
    return "\n".join(lines)


@app.command("show")
def show(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    identity_file: Annotated[
        Path | None, typer.Option("--identity-file", help="identity file (as for serve)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show the HWID and the ePID of each held host key, with the products it covers."""
    settings = _settings(config, data_dir, identity_file)
    try:
        info = describe(settings)
    except IdentityError as exc:
        raise fail(str(exc)) from None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if as_json:
        print_json(info)
    else:
        typer.echo(_text(info))
