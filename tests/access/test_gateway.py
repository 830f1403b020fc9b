"""Gateway mode end to end with the real KMS client, real store and real account backend."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmsgate.access.accounts.backends import build_backend
from kmsgate.access.accounts.base import LocalSettings
from kmsgate.access.gateway import Gateway
from kmsgate.auth.passwords import hash_password
from kmsgate.catalog import default_catalog
from kmsgate.config.settings import ServeSettings
from kmsgate.net import Peer
from kmsgate.node import Node
from kmsgate.server.host import KmsHost
from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from tests.support.kms import RawClient, activate_once, make_request
from tests.support.postgres import PostgresServer, running_postgres

pytestmark = pytest.mark.integration

PASSWORD = "campus-pass-1"


def gateway_settings(db: str, tmp_path: Path, **overrides: object) -> ServeSettings:
    base: dict[str, object] = {
        "listen": ["127.0.0.1:0"],
        "db": db,
        "data_dir": tmp_path,
        "no_web": True,
        "gateway": True,
        "node_name": "gw-1",
    }
    base.update(overrides)
    return ServeSettings(**base)  # type: ignore[arg-type]


async def add_user(store: Store, name: str) -> None:
    await store.add_user(name, hash_password(PASSWORD))


async def refused(port: int) -> bool:
    """True when the host closes the connection without serving."""
    try:
        await activate_once(port)
    except (ConnectionError, OSError):
        return True
    return False


async def audit_kinds(gateway: Gateway, **filters: object) -> list[AuditEvent]:
    await gateway.audit.flush()
    page = await gateway.store.list_audit(limit=100, **filters)  # type: ignore[arg-type]
    return list(reversed(page.items))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    settings = gateway_settings(f"sqlite:///{tmp_path / 'kms.db'}", tmp_path, quota_week=2)
    async with Node(settings) as service:
        assert service.store is not None
        await add_user(service.store, "alice")
        yield service


async def test_login_opens_one_activation_and_the_audit_links_it(node: Node) -> None:
    assert node.host is not None and node.gateway is not None
    port = node.host.port
    assert await refused(port)  # no login yet

    outcome = await node.gateway.login("alice", PASSWORD, "127.0.0.1")
    assert outcome.status == 200 and outcome.window is not None
    result = await activate_once(port, 6)
    assert result.ok
    assert await refused(port)  # the window served once

    events = await audit_kinds(node.gateway, username="alice")
    assert [e.kind for e in events] == [
        "login_ok",
        "window_granted",
        "window_consumed",
        "activation",
    ]
    activation = events[-1]
    assert activation.cmid == result.response.client_machine_id
    assert activation.machine_name == "test-pc.example.test"
    assert activation.product == "Windows Server 2019 Datacenter"
    assert activation.window_id == outcome.window.id and activation.address == "127.0.0.1"
    refusals = await audit_kinds(node.gateway, kind="connection_refused")
    # Counted per source and minute: one row, or two when the minute turned in between.
    assert sum(e.count for e in refusals) == 2 and len(refusals) <= 2
    assert all(e.username is None and e.address == "127.0.0.1" for e in refusals)


async def test_wrong_password_and_unknown_user_are_audited(node: Node) -> None:
    assert node.gateway is not None
    assert (await node.gateway.login("alice", "wrong", "127.0.0.1")).status == 401
    assert (await node.gateway.login("mallory", PASSWORD, "127.0.0.1")).status == 401
    failed = await audit_kinds(node.gateway, kind="login_failed")
    assert [(e.username, e.detail) for e in failed] == [
        ("alice", "wrong password"),
        ("mallory", "unknown user"),
    ]
    assert all(PASSWORD not in e.detail for e in failed)


async def test_quota_exhaustion_blocks_the_next_login(node: Node) -> None:
    assert node.host is not None and node.gateway is not None
    for _ in range(2):
        assert (await node.gateway.login("alice", PASSWORD, "127.0.0.1")).ok
        assert (await activate_once(node.host.port)).ok
    over = await node.gateway.login("alice", PASSWORD, "127.0.0.1")
    assert over.status == 403 and "weekly quota of 2" in over.message and "resets" in over.message
    assert await refused(node.host.port)
    await GatewayStore(node.store).set_quota("alice", 5, None)  # type: ignore[arg-type]
    assert (await node.gateway.login("alice", PASSWORD, "127.0.0.1")).ok


async def test_unused_window_expires_and_is_audited(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'kms.db'}")
    clock_now = [datetime(2026, 11, 23, 9, 0, tzinfo=UTC)]
    try:
        await add_user(store, "bob")
        gateway = Gateway(
            GatewayStore(store),
            build_backend(LocalSettings(), store=store),
            default_catalog(),
            node="gw-1",
            window=timedelta(seconds=60),
            clock=lambda: clock_now[0],
        )
        outcome = await gateway.login("bob", PASSWORD, "10.1.1.1")
        assert outcome.ok
        clock_now[0] += timedelta(seconds=61)
        assert await gateway.admit(Peer("10.1.1.1", 50000)) is None
        expired = await gateway.sweep()
        assert [w.id for w in expired] == [outcome.window.id]  # type: ignore[union-attr]
        kinds = [e.kind for e in await audit_kinds(gateway)]
        assert sorted(kinds[-2:]) == ["connection_refused", "window_expired"]
        await gateway.audit.close()
    finally:
        await store.close()


async def test_gateway_in_front_of_a_relayed_upstream(tmp_path: Path) -> None:
    async with KmsHost(
        ServeSettings(
            listen=["127.0.0.1:0"], epid="06401-00206-271-298329-03-1033-9600.0000-0452017"
        )
    ) as upstream:
        settings = gateway_settings(
            f"sqlite:///{tmp_path / 'kms.db'}", tmp_path, upstream=f"127.0.0.1:{upstream.port}"
        )
        async with Node(settings) as gateway_node:
            assert gateway_node.host is not None and gateway_node.gateway is not None
            assert gateway_node.store is not None
            await add_user(gateway_node.store, "carol")
            assert await refused(gateway_node.host.port)
            assert (await gateway_node.gateway.login("carol", PASSWORD, "127.0.0.1")).ok
            result = await activate_once(gateway_node.host.port, 5)
            assert result.response.epid == "06401-00206-271-298329-03-1033-9600.0000-0452017"
            assert await refused(gateway_node.host.port)
            events = await audit_kinds(gateway_node.gateway, kind="activation")
            assert [(e.username, e.result) for e in events] == [("carol", "activated")]
        assert upstream.stats.activations == 1


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


async def test_two_nodes_race_for_one_window(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database(f"gw_{uuid.uuid4().hex[:8]}")
    node_a = Node(gateway_settings(url, tmp_path / "a", node_name="gw-a"))
    node_b = Node(gateway_settings(url, tmp_path / "b", node_name="gw-b"))
    async with node_a, node_b:
        assert node_a.host and node_b.host and node_a.gateway and node_a.store
        await add_user(node_a.store, "dave")
        for _ in range(3):
            assert (await node_a.gateway.login("dave", PASSWORD, "127.0.0.1")).ok
            ports = [node_a.host.port, node_b.host.port] * 3
            started = time.monotonic()
            outcomes = await asyncio.gather(*(refused(p) for p in ports))
            assert outcomes.count(False) == 1, outcomes  # exactly one connection served
            assert time.monotonic() - started < 30


async def test_a_connection_closed_unserved_gives_the_window_back(node: Node) -> None:
    assert node.host is not None and node.gateway is not None
    outcome = await node.gateway.login("alice", PASSWORD, "127.0.0.1")
    assert outcome.window is not None
    idle = await RawClient.connect(node.host.port)
    await idle.bind()
    await idle.close()  # took the window, asked nothing
    deadline = time.monotonic() + 10
    while not await audit_kinds(node.gateway, kind="window_released"):
        assert time.monotonic() < deadline, "the window was not released"
        await asyncio.sleep(0.05)
    [released] = await audit_kinds(node.gateway, kind="window_released")
    assert released.window_id == outcome.window.id
    assert released.detail.startswith(
        "the connection closed without a served activation; open again until "
    )
    usage = await node.gateway.store.quota_usage("alice", datetime.now(UTC))
    assert (usage.week_used, usage.open_windows) == (0, 1)
    assert (await activate_once(node.host.port)).ok  # the same window, once more
    await node.gateway.settle()
    usage = await node.gateway.store.quota_usage("alice", datetime.now(UTC))
    assert (usage.week_used, usage.open_windows) == (1, 0)


async def test_only_the_admitted_connection_ends_its_admission(node: Node) -> None:
    # Another connection from the same address and port (to another host address) is
    # refused; its close must not release the window the first connection holds.
    assert node.gateway is not None
    gateway = node.gateway
    outcome = await gateway.login("alice", PASSWORD, "127.0.0.1")
    assert outcome.window is not None
    admitted, twin = Peer("127.0.0.1", 50000), Peer("127.0.0.1", 50000)
    assert await gateway.admit(admitted) is not None
    assert await gateway.admit(twin) is None
    gateway.forget(twin, "the twin closed")
    await gateway.settle()
    assert await audit_kinds(gateway, kind="window_released") == []
    gateway.forget(admitted, "the admitted connection closed")
    await gateway.settle()
    [released] = await audit_kinds(gateway, kind="window_released")
    assert released.window_id == outcome.window.id
    assert released.detail.startswith("the admitted connection closed; open again until ")


async def test_a_window_released_in_its_last_second_has_ended(node: Node) -> None:
    # The relay closes at the window's end by a timer that may fire a little early: a
    # window with under a second left is not "open again", it ended unused.
    assert node.host is not None and node.gateway is not None
    gateway = node.gateway
    outcome = await gateway.login("alice", PASSWORD, "127.0.0.1")
    assert outcome.window is not None
    real_clock = gateway.clock
    idle = await RawClient.connect(node.host.port)
    await idle.bind()
    gateway.clock = lambda: outcome.window.expires_at - timedelta(milliseconds=300)  # type: ignore[method-assign,union-attr]
    try:
        await idle.close()
        deadline = time.monotonic() + 10
        while not await audit_kinds(gateway, kind="window_released"):
            assert time.monotonic() < deadline, "the window was not released"
            await asyncio.sleep(0.05)
    finally:
        gateway.clock = real_clock  # type: ignore[method-assign]
    [released] = await audit_kinds(gateway, kind="window_released")
    assert released.detail == (
        "the connection closed without a served activation; "
        "window ended unused: the quota is given back"
    )


async def test_the_relay_withholds_answers_for_another_machine(tmp_path: Path) -> None:
    async with KmsHost(ServeSettings(listen=["127.0.0.1:0"])) as upstream:
        settings = gateway_settings(
            f"sqlite:///{tmp_path / 'kms.db'}", tmp_path, upstream=f"127.0.0.1:{upstream.port}"
        )
        async with Node(settings) as relay_node:
            assert relay_node.host and relay_node.gateway and relay_node.store
            await add_user(relay_node.store, "erin")
            assert (await relay_node.gateway.login("erin", PASSWORD, "127.0.0.1")).ok
            client = await RawClient.connect(relay_node.host.port)
            await client.bind()
            first, other = make_request(), make_request()
            assert (await client.activate(request=first)).ok
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await client.activate(request=other)  # answered upstream, never passed on
            await client.close()
            await relay_node.gateway.settle()
            events = await audit_kinds(relay_node.gateway, kind="activation")
        assert upstream.stats.activations == 2
    assert [(e.cmid, e.result) for e in events] == [
        (first.client_machine_id, "activated"),
        (other.client_machine_id, "refused"),
    ]
    assert events[1].detail == (
        "0xC004F042: upstream answer withheld: "
        f"the window serves client machine {first.client_machine_id} only"
    )
