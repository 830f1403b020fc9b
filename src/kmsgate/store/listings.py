"""The paged listings: clients (sorted, searched), one client's history, all activations."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from typing import Any, Literal, TypeVar, get_args

from sqlalchemy import ColumnElement, Row, Select, case, func, select

from kmsgate.store import cursor as cursors
from kmsgate.store.activation_fold import aware
from kmsgate.store.engine import Dialect
from kmsgate.store.paging import (
    Keyset,
    Listing,
    int_from_key,
    str_from_key,
    time_from_key,
    time_to_key,
    uuid_from_key,
)
from kmsgate.store.records import ActivationRow, ClientRow
from kmsgate.store.schema import activations, clients, counters
from kmsgate.store.search import ClientSearch

ClientSort = Literal["last_seen", "first_seen", "machine_name", "sku_name", "request_count"]
CLIENT_SORTS: tuple[str, ...] = get_args(ClientSort)

_CLIENT_KEY_CODECS: dict[str, tuple[Callable[[Any], cursors.KeyValue], Callable[[object], Any]]] = {
    "last_seen": (time_to_key, time_from_key),
    "first_seen": (time_to_key, time_from_key),
    "machine_name": (str, str_from_key),
    "sku_name": (str, str_from_key),
    "request_count": (int, int_from_key),
}

_Row = TypeVar("_Row", ClientRow, ActivationRow)


def _from_columns(cls: type[_Row], row: Row[Any]) -> _Row:
    """A records.py row from the selected columns named like its fields."""
    m = row._mapping
    return cls(**{f.name: m[f.name] for f in fields(cls)})


def client_row(row: Row[Any]) -> ClientRow:
    """A ClientRow from a selected clients row."""
    return _from_columns(ClientRow, row)


def activation_row(row: Row[Any]) -> ActivationRow:
    """An ActivationRow from a selected activations row."""
    return _from_columns(ActivationRow, row)


def _counter(name: str) -> Select[Any]:
    return select(counters.c.value).where(counters.c.name == name)


def _retained(name: str) -> Select[Any]:
    """A lifetime counter less the rows --retention-days deleted of it ("pruned:" name)."""
    signed = case((counters.c.name == name, counters.c.value), else_=-counters.c.value)
    return select(func.coalesce(func.sum(signed), 0)).where(
        counters.c.name.in_((name, f"pruned:{name}"))
    )


def client_listing(
    search: str | None, sort: ClientSort, descending: bool, dialect: Dialect
) -> Listing[ClientRow]:
    """Clients by `sort`; search matches name/SKU substring, address prefix, CMID."""
    if sort not in CLIENT_SORTS:
        raise ValueError(f"sort must be one of {', '.join(CLIENT_SORTS)}")
    term = (search or "").strip()
    to_key, from_key = _CLIENT_KEY_CODECS[sort]
    keyset = Keyset(
        listing="clients",
        columns=(clients.c[sort], clients.c.cmid),
        descending=descending,
        order=f"{sort}:{'desc' if descending else 'asc'}",
        scope=cursors.scope_of(term),
        to_key=(to_key, str),
        from_key=(from_key, uuid_from_key),
    )
    conditions: list[ColumnElement[bool]] = []
    search_for = None
    if term:
        try:
            # A GUID is a CMID lookup: one primary-key probe, no name scan.
            conditions.append(clients.c.cmid == uuid.UUID(term))
        except ValueError:
            search_for = ClientSearch(term, dialect)
    # Filtered totals would need a count(*) scan: only the unfiltered one is free.
    total_query = None if term else _counter("clients")
    return Listing(keyset, select(clients), conditions, client_row, total_query, search_for)


def client_query(cmid: uuid.UUID) -> Select[Any]:
    """One client's row by CMID (convert it with client_row)."""
    return select(clients).where(clients.c.cmid == cmid)


def history_listing(cmid: uuid.UUID) -> Listing[ActivationRow]:
    """One client's requests, newest first; total is its request count."""
    keyset = Keyset(
        listing="history",
        columns=(activations.c.id,),
        descending=True,
        order="id:desc",
        scope=cursors.scope_of(str(cmid)),
        to_key=(int,),
        from_key=(int_from_key,),
    )
    return Listing(
        keyset,
        select(activations),
        [activations.c.cmid == cmid],
        activation_row,
        # Every stored request of a CMID was counted into its client row.
        select(clients.c.request_count).where(clients.c.cmid == cmid),
    )


def activation_listing(
    since: datetime | None, until: datetime | None, result: str | None, node: str | None
) -> Listing[ActivationRow]:
    """Requests newest first, filtered by time range [since, until), result and node."""
    conditions: list[ColumnElement[bool]] = []
    if since is not None:
        conditions.append(activations.c.time >= aware(since, "since"))
    if until is not None:
        conditions.append(activations.c.time < aware(until, "until"))
    if result is not None:
        conditions.append(activations.c.result == result)
    if node is not None:
        conditions.append(activations.c.node == node)
    keyset = Keyset(
        listing="activations",
        columns=(activations.c.time, activations.c.id),
        descending=True,
        order="time:desc",
        scope=cursors.scope_of(
            since and time_to_key(since), until and time_to_key(until), result, node
        ),
        to_key=(time_to_key, int),
        from_key=(time_from_key, int_from_key),
    )
    total_query = None
    if since is None and until is None and node is None:
        total_query = _retained("activations" if result is None else f"result:{result}")
    return Listing(keyset, select(activations), conditions, activation_row, total_query)
