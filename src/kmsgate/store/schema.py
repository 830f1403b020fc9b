"""SQLAlchemy Core tables and indexes; migrations/versions must produce exactly this."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Uuid,
    false,
    text,
)
from sqlalchemy.types import TypeDecorator

# Named constraints so that later migrations can address them on both dialects.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes: TIMESTAMPTZ on PostgreSQL, sortable naive-UTC ISO text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store only takes aware UTC times")
        value = value.astimezone(UTC)
        # SQLite stores text; dropping the (always UTC) offset keeps one sortable format.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def copy(self, **kw: Any) -> UtcDateTime:
        return UtcDateTime()


# SQLite only auto-numbers an INTEGER PRIMARY KEY (the rowid alias), not BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# A client-chosen unsigned 32-bit field (the license status): beyond PostgreSQL's INTEGER.
# SQLite's INTEGER already holds 64 bits.
Unsigned32 = BigInteger().with_variant(Integer(), "sqlite")

clients = Table(
    "clients",
    metadata,
    Column("cmid", Uuid(), primary_key=True),
    Column("machine_name", String(), nullable=False),
    Column("application_id", Uuid(), nullable=True),
    Column("sku_id", Uuid(), nullable=True),
    Column("sku_name", String(), nullable=False),
    Column("kms_id", Uuid(), nullable=True),
    Column("license_status", Unsigned32, nullable=True),
    Column("first_seen", UtcDateTime(), nullable=False),
    Column("last_seen", UtcDateTime(), nullable=False),
    Column("request_count", BigInteger(), nullable=False),
    Column("last_epid", String(), nullable=True),
    Column("last_address", String(), nullable=False),
    Column("last_protocol", Integer(), nullable=True),
)

# One index per dashboard sort key, each ending in the cmid tiebreak of the keyset cursor.
# PostgreSQL also gets trigram (pg_trgm) indexes for search, created by migration 0001 only
# where the extension is available, so they are not declared here.
CLIENT_SORT_KEYS = ("last_seen", "first_seen", "machine_name", "sku_name", "request_count")
for _key in CLIENT_SORT_KEYS:
    Index(f"ix_clients_{_key}_cmid", clients.c[_key], clients.c.cmid)

activations = Table(
    "activations",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("time", UtcDateTime(), nullable=False),
    Column("cmid", Uuid(), nullable=True),
    Column("machine_name", String(), nullable=False),
    Column("address", String(), nullable=False),
    Column("sku_id", Uuid(), nullable=True),
    Column("sku_name", String(), nullable=False),
    Column("license_status", Unsigned32, nullable=True),
    Column("protocol", Integer(), nullable=True),
    Column("result", String(), nullable=False),
    # HRESULTs are unsigned 32-bit (0xC004F074 > 2**31): too big for INTEGER.
    Column("hresult", BigInteger(), nullable=False),
    Column("node", String(), nullable=False),
    Index("ix_activations_cmid_id", "cmid", "id"),
    Index("ix_activations_time_id", "time", "id"),
    # "Show refusals": rare among recent rows, so the time index alone would walk far. A
    # partial index: the activations themselves (nearly every row) pay no entry in it. The
    # migrations create it (0004), on PostgreSQL with the same WHERE; naming that here
    # (postgresql_where) would load SQLAlchemy's PostgreSQL dialect, 2 MiB, into SQLite nodes.
    Index(
        "ix_activations_refused_time_id",
        "time",
        "id",
        sqlite_where=text("result = 'refused'"),
    ),
)

# Named totals ("clients", "activations", "result:<r>", "protocol:<n>") so stats() reads rows.
counters = Table(
    "counters",
    metadata,
    Column("name", String(), primary_key=True),
    Column("value", BigInteger(), nullable=False),
)

activation_hours = Table(
    "activation_hours",
    metadata,
    Column("hour", UtcDateTime(), primary_key=True),
    Column("node", String(), primary_key=True),
    Column("count", BigInteger(), nullable=False),
)

product_counts = Table(
    "product_counts",
    metadata,
    Column("family", String(), primary_key=True),
    Column("sku_name", String(), primary_key=True),
    Column("count", BigInteger(), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("name", String(), nullable=False, unique=True),
    Column("password_hash", String(), nullable=False),
    Column("is_admin", Boolean(), nullable=False, server_default=false()),
    Column("created", UtcDateTime(), nullable=False),
    Column("disabled", Boolean(), nullable=False, server_default=false()),
)

# Gateway: per-user quota overrides live on users (migration 0002 adds the columns).
users.append_column(Column("quota_week", Integer(), nullable=True))
users.append_column(Column("quota_month", Integer(), nullable=True))

# One login's right for its source address to activate once (gateway mode).
windows = Table(
    "windows",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("username", String(), nullable=False),
    Column("address", String(), nullable=False),
    Column("granted_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("consumed_at", UtcDateTime(), nullable=True),
    Column("consumed_node", String(), nullable=True),
    Column("expired_noted", Boolean(), nullable=False, server_default=false()),
    Index("ix_windows_address_consumed_at_expires_at", "address", "consumed_at", "expires_at"),
    Index("ix_windows_username_consumed_at", "username", "consumed_at"),
    Index("ix_windows_expires_at", "expires_at"),
)

# The audit trail: logins, windows and activations linked by user, address, window and CMID.
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("time", UtcDateTime(), nullable=False),
    Column("kind", String(), nullable=False),
    Column("node", String(), nullable=False),
    Column("username", String(), nullable=True),
    Column("address", String(), nullable=True),
    Column("backend", String(), nullable=True),
    Column("window_id", BigInteger(), nullable=True),
    Column("cmid", Uuid(), nullable=True),
    Column("machine_name", String(), nullable=True),
    Column("product", String(), nullable=True),
    Column("result", String(), nullable=True),
    Column("detail", String(), nullable=False),
    Index("ix_audit_events_username_id", "username", "id"),
    Index("ix_audit_events_address_id", "address", "id"),
    Index("ix_audit_events_kind_id", "kind", "id"),
    Index("ix_audit_events_time_id", "time", "id"),
)

# Machines seen lately per client counter (Windows, each Office host key): the genuine-host
# client count (--count-mode seen), shared by the nodes of one database.
seen_machines = Table(
    "seen_machines",
    metadata,
    Column("counter", String(), primary_key=True),
    Column("cmid", Uuid(), primary_key=True),
    Column("last_seen", UtcDateTime(), nullable=False),
    Index("ix_seen_machines_counter_last_seen", "counter", "last_seen"),
    Index("ix_seen_machines_last_seen", "last_seen"),
)

# Licence reports: each machine once per (UTC month, SKU) it was served in. Filled by a
# database trigger on activations (migration 0007), so the report reads one month's keys
# instead of sorting every renewal of the month.
machine_months = Table(
    "machine_months",
    metadata,
    Column("month", String(7), primary_key=True),  # "YYYY-MM"
    Column("sku_id", Uuid(), primary_key=True),
    Column("cmid", Uuid(), primary_key=True),
    Column("sku_name", String(), nullable=False),  # as first served in the month
    sqlite_with_rowid=False,
)

# Migration 0008: a window is spent by its first served activation (only spent windows count
# against the quota once they end), and one audit row may stand for a counted burst
# (refused connections per source and minute).
windows.append_column(Column("spent_at", UtcDateTime(), nullable=True))
Index("ix_windows_username_spent_at", windows.c.username, windows.c.spent_at)
audit_events.append_column(Column("count", Integer(), nullable=False, server_default=text("1")))

# Dashboard sessions: the cookie names a row here, so logging out (deleting it) ends the
# session on every node sharing the database, and across restarts. `id` is the SHA-256 of
# the cookie's random token: the table alone opens no session.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("username", String(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_web_sessions_expires_at", "expires_at"),
    Index("ix_web_sessions_username", "username"),
)
