"""Help for the commands built from the settings model: one panel per group of options.

Typer's own option table shrinks every column to fit, so at 80 columns it cuts long flag
names (`--deny-unknown-pro…`). Here the flag column never wraps or shrinks: the negative
form of a switch goes on its own line, and only the description wraps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperOption

# Rich is imported when help is shown: a serving node never renders it (about 2 MiB).
if TYPE_CHECKING:
    from rich.padding import Padding
    from rich.panel import Panel

DEFAULT_PANEL = "Options"


def _metavar(param: TyperOption, ctx: typer.Context) -> str:
    """What follows the flag: nothing for a switch, else Typer's own type label."""
    if param.is_flag:
        return ""
    return param.display_type_rich(ctx) or ""


def option_rows(command: TyperCommand, ctx: typer.Context) -> dict[str, list[TyperOption]]:
    """The visible options of `command`, by help panel, in declaration order."""
    panels: dict[str, list[TyperOption]] = {}
    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and not param.hidden:
            panel = getattr(param, "rich_help_panel", None) or DEFAULT_PANEL
            panels.setdefault(panel, []).append(param)
    # Typer lists its default panel first; so do we (it holds --config and --help).
    if DEFAULT_PANEL in panels:
        panels = {DEFAULT_PANEL: panels.pop(DEFAULT_PANEL), **panels}
    return panels


def _panel(title: str, params: list[TyperOption], ctx: typer.Context) -> Panel:
    from rich import box
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0), expand=True)
    table.add_column(no_wrap=True, style="bold cyan")
    table.add_column(no_wrap=True, style="yellow")
    table.add_column(ratio=1, overflow="fold")
    for param in params:
        names = Text("\n".join([", ".join(param.opts), *param.secondary_opts]))
        table.add_row(names, _metavar(param, ctx), param.help or "")
    return Panel(table, title=title, title_align="left", border_style="dim", box=box.ROUNDED)


class SettingsHelpCommand(TyperCommand):
    """A Typer command whose --help groups options into panels without cutting a flag."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from rich.console import Console, Group
        from rich.padding import Padding
        from rich.text import Text

        console = Console(highlight=False)
        parts: list[Padding | Panel] = [Padding(Text(self.get_usage(ctx)), (1, 1, 0, 1))]
        if self.help:
            parts.append(Padding(Text(self.help.strip()), (1, 1, 1, 1)))
        parts.extend(_panel(title, params, ctx) for title, params in option_rows(self, ctx).items())
        console.print(Group(*parts))
