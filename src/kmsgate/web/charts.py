"""Chart geometry for the dashboard's SVG charts, computed here so templates only draw."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kmsgate.web.render import as_utc, fmt_int


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of an SVG chart, in viewBox units."""

    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis tick: position in viewBox units and its label."""

    pos: float
    label: str


@dataclass(frozen=True, slots=True)
class HourChart:
    """Geometry of the requests-per-hour bar chart."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    total: int
    peak: int
    busiest: list[tuple[str, int]]


def nice_ceiling(value: int) -> int:
    """Smallest 1/2/5 x 10^n at or above value, so y-axis labels are round numbers."""
    if value <= 1:
        return 1
    exp = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * exp >= value:
            return step * exp
    return 10 * exp  # pragma: no cover - the loop always returns


def _hour_bar(
    x: float, slot: float, top: int, plot_h: int, scale: int, hour: datetime, count: int
) -> Bar:
    height = max(plot_h * count / scale, 1.0)
    label = f"{hour:%Y-%m-%d %H:00} UTC: {count} request{'s' if count != 1 else ''}"
    return Bar(
        round(x + 0.5, 2),
        round(top + plot_h - height, 2),
        round(max(slot - 1, 1), 2),
        round(height, 2),
        label,
    )


def hour_chart(per_hour: Sequence[tuple[datetime, int]]) -> HourChart:
    """Bars for hourly buckets (oldest first), day ticks at midnight UTC, 3 y-axis ticks."""
    left, top, plot_w, plot_h = 44, 8, 840, 160
    slot = plot_w / max(len(per_hour), 1)
    peak = max((c for _, c in per_hour), default=0)
    scale = nice_ceiling(peak)
    bars: list[Bar] = []
    x_ticks: list[Tick] = []
    for i, (hour, count) in enumerate(per_hour):
        hour = as_utc(hour)
        x = left + i * slot
        if hour.hour == 0:
            # A label needs ~60 units; one too close to the right edge would be clipped.
            label = hour.strftime("%a %d %b") if x < left + plot_w - 60 else ""
            x_ticks.append(Tick(round(x, 2), label))
        if count:
            bars.append(_hour_bar(x, slot, top, plot_h, scale, hour, count))
    y_ticks = [
        Tick(round(top + plot_h - plot_h * f, 2), fmt_int(round(scale * f))) for f in (0, 0.5, 1)
    ]
    busiest = sorted(
        ((f"{as_utc(h):%Y-%m-%d %H:00}", c) for h, c in per_hour if c), key=lambda t: -t[1]
    )[:10]
    return HourChart(
        width=left + plot_w + 8,
        height=top + plot_h + 24,
        left=left,
        top=top,
        plot_width=plot_w,
        plot_height=plot_h,
        bars=bars,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        total=sum(c for _, c in per_hour),
        peak=peak,
        busiest=busiest,
    )


def product_bars(per_product: Sequence[tuple[str, int]]) -> list[tuple[str, int, float]]:
    """(label, count, percent of the largest) for horizontal bars."""
    top = max((c for _, c in per_product), default=0)
    return [(name, count, 100.0 * count / top if top else 0.0) for name, count in per_product]
