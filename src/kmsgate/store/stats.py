"""Dashboard figures, read from the counters and hourly buckets the batch writes keep."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsgate.store.activation_fold import hour_of
from kmsgate.store.records import Stats
from kmsgate.store.schema import activation_hours, activations, counters, product_counts

STATS_HOURS = 7 * 24
TOP_PRODUCTS = 20


async def read_stats(conn: AsyncConnection, end: datetime) -> Stats:
    """The figures for the STATS_HOURS hours up to the UTC hour `end`; no big-table scans."""
    start = end - timedelta(hours=STATS_HOURS - 1)
    found = {
        name: int(value)
        for name, value in await conn.execute(select(counters.c.name, counters.c.value))
    }
    hourly = await conn.execute(
        select(activation_hours.c.hour, func.sum(activation_hours.c.count))
        .where(activation_hours.c.hour >= start, activation_hours.c.hour <= end)
        .group_by(activation_hours.c.hour)
    )
    per_hour_found = {hour_of(h): int(c) for h, c in hourly}
    products = await conn.execute(
        select(product_counts.c.family, product_counts.c.sku_name, product_counts.c.count)
    )
    per_label: dict[str, int] = {}
    for family, sku_name, count in products:
        label = family or sku_name or "unknown"
        per_label[label] = per_label.get(label, 0) + int(count)
    # max() over the (time, id) index reads one index page, not the table.
    last = (await conn.execute(select(func.max(activations.c.time)))).scalar()
    per_protocol = {
        int(name.split(":", 1)[1]): value
        for name, value in found.items()
        if name.startswith("protocol:") and name.split(":", 1)[1].lstrip("-").isdigit()
    }
    return Stats(
        clients=found.get("clients", 0),
        activations=found.get("activations", 0),
        refusals=found.get("result:refused", 0),
        per_hour=[
            (start + timedelta(hours=i), per_hour_found.get(start + timedelta(hours=i), 0))
            for i in range(STATS_HOURS)
        ],
        per_product=sorted(per_label.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_PRODUCTS],
        per_protocol=dict(sorted(per_protocol.items())),
        last_activation=last,
        refused_connections=found.get("gateway:refused_connections", 0),
    )
