"""W4: password checks run off the event loop, on a small niced pool that refuses overflow.

A login flood must queue no more argon2 work than the pool holds: past that, 503 at once.
The KMS throughput ratio under a flood is measured by bench/bench_login_flood.py (no timing
is asserted here).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from pathlib import Path

import httpx
import prometheus_client
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI

from kmsgate.access.throttle import LoginThrottle
from kmsgate.auth.passwords import HashingPool
from kmsgate.catalog import default_catalog
from kmsgate.store.database import Store
from kmsgate.web import create_app
from tests.support.browser import ADMIN, ADMIN_PASSWORD, NODE, SECRET, client_for, open_store
from tests.support.web_node import Node, admin_login, csrf_of, running, seed_admin, web_client

pytestmark = [pytest.mark.timeout(300), pytest.mark.integration]


class GatedHasher(PasswordHasher):
    """Cheap real argon2 whose checks wait at a gate, and which notes the thread of each."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.threads: list[tuple[int, int]] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.threads.append((threading.get_ident(), threading.get_native_id()))
        self.started.release()
        assert self.gate.wait(60), "the test never opened the gate"
        return super().verify(hash, password)


async def wrong_admin_login(client: httpx.AsyncClient, token: str, n: int) -> httpx.Response:
    """The admin's name with the n-th wrong password, on the login form."""
    data = {"username": ADMIN, "password": f"guess-{n}", "csrf_token": token}
    return await client.post("/login", data=data)


def gated_app(
    store: Store, limiter: LoginThrottle, hasher: GatedHasher, pool: HashingPool
) -> FastAPI:
    """The web app with this limiter, this gated hasher and this hashing pool."""
    return create_app(
        store,
        catalog=default_catalog(),
        metrics_registry=prometheus_client.CollectorRegistry(),
        secret_key=SECRET,
        secure_cookies=False,
        node_name=NODE,
        login_limiter=limiter,
        password_hasher=hasher,
        password_pool=pool,
    )


async def test_checks_beyond_the_pool_bound_get_503_and_never_run_on_the_loop(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path, seed=False)
    hasher = GatedHasher()
    pool = HashingPool(workers=1, max_waiting=2, nice=7, reserved=0)
    limiter = LoginThrottle(max_failures=100, max_failures_per_ip=100)
    app = gated_app(store, limiter, hasher, pool)
    try:
        async with client_for(app) as client:
            token = csrf_of((await client.get("/login")).text)

            guess = functools.partial(wrong_admin_login, client, token)

            # One check running, two queued: the pool is full.
            held = [asyncio.create_task(guess(n)) for n in range(3)]
            assert await asyncio.to_thread(hasher.started.acquire, True, 30)
            await asyncio.sleep(0.2)  # the two others reach the queue
            refused = await asyncio.gather(*(guess(n) for n in range(3, 9)))
            assert [r.status_code for r in refused] == [503] * 6
            assert all(r.headers["Retry-After"] == "5" for r in refused)
            assert "Too many logins are being checked" in refused[0].text
            assert not any(task.done() for task in held)
            hasher.gate.set()
            answered = await asyncio.gather(*held)
            assert [r.status_code for r in answered] == [401] * 3
            # The refused attempts did not count as failures; the checked ones did.
            assert len(limiter.by_user._entries[(ADMIN, "")].times) == 3
    finally:
        hasher.gate.set()
        await store.close()
    loop_thread = threading.get_ident()
    assert len(hasher.threads) == 3
    assert all(ident != loop_thread for ident, _ in hasher.threads)
    assert {native for _, native in hasher.threads} <= pool.native_ids
    for native in pool.native_ids:
        assert os.getpriority(os.PRIO_PROCESS, native) >= 7


async def test_a_flood_of_strangers_cannot_take_the_places_kept_for_known_clients(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path)
    hasher = GatedHasher()
    pool = HashingPool(workers=1, max_waiting=2, nice=7, reserved=1)
    limiter = LoginThrottle(max_failures=100, max_failures_per_ip=100)
    limiter.success("198.51.100.1", ADMIN)  # the admin logged in from there before
    # A portal user, known at her own address too, is not an administrator.
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    await store.add_user("mallory", cheap.hash("mallory-passphrase"), is_admin=False)
    limiter.success("198.51.100.2", "mallory")
    app = gated_app(store, limiter, hasher, pool)
    owner_transport = httpx.ASGITransport(app=app, client=("198.51.100.1", 50001))
    portal_user = httpx.ASGITransport(app=app, client=("198.51.100.2", 50002))
    try:
        async with (
            client_for(app) as stranger,
            httpx.AsyncClient(transport=owner_transport, base_url="http://testserver") as owner,
            httpx.AsyncClient(transport=portal_user, base_url="http://testserver") as mallory,
        ):
            token = csrf_of((await stranger.get("/login")).text)
            owner_token = csrf_of((await owner.get("/login")).text)
            mallory_token = csrf_of((await mallory.get("/login")).text)

            guess = functools.partial(wrong_admin_login, stranger, token)

            # The strangers' places (one running, one queued) are taken ...
            held = [asyncio.create_task(guess(n)) for n in range(2)]
            assert await asyncio.to_thread(hasher.started.acquire, True, 30)
            await asyncio.sleep(0.2)
            assert (await guess(2)).status_code == 503
            # ... the kept place is the administrators': not a known portal user's ...
            data = {"username": "mallory", "password": "x" * 12, "csrf_token": mallory_token}
            assert (await mallory.post("/login", data=data)).status_code == 503
            # ... and the admin, from where they logged in before, still gets it.
            data = {"username": ADMIN, "password": ADMIN_PASSWORD, "csrf_token": owner_token}
            admin = asyncio.create_task(owner.post("/login", data=data))
            await asyncio.sleep(0.2)
            assert not admin.done()  # queued, not refused
            assert (await guess(3)).status_code == 503  # the kept place is not the strangers'
            hasher.gate.set()
            assert (await admin).status_code == 303
            assert [r.status_code for r in await asyncio.gather(*held)] == [401, 401]
    finally:
        hasher.gate.set()
        await store.close()


def thread_priorities(pid: int) -> dict[int, int]:
    """{tid: nice} of every thread of a process (threads may come and go meanwhile)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # Fields after the command name: state is the 3rd field of the line, nice the 19th.
        found[int(task.name)] = int(stat.rsplit(")", 1)[1].split()[16])
    return found


class PrioritySampler(threading.Thread):
    """Notes the nice value of every thread of a process seen while it runs (bounded)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.seen: dict[int, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        for _ in range(20_000):  # about 100 s at most
            if self.done.wait(0.005):
                return
            self.seen.update(thread_priorities(self.pid))


def test_a_login_flood_against_a_real_node_is_cut_at_the_pool(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.data_dir.mkdir()
    seed_admin(node.db_url, cheap=False)  # production argon2 costs
    sources = [f"127.0.0.{n}" for n in range(2, 17)]
    names = [ADMIN, "ghost-1", "ghost-2", "ghost-3"]  # unknown names cost a check too
    with running(node):
        main_thread = node.pid
        with web_client(node) as browser:
            token_page = browser.get("/login")
            token, cookie = csrf_of(token_page.text), dict(browser.cookies)

        async def flood() -> list[int]:
            async def one(source: str, name: str) -> int:
                transport = httpx.AsyncHTTPTransport(local_address=source)
                async with httpx.AsyncClient(
                    base_url=node.url, transport=transport, cookies=cookie, timeout=60
                ) as client:
                    data = {"username": name, "password": "wrong", "csrf_token": token}
                    answer = await client.post("/login", data=data)
                    if answer.status_code == 503:
                        assert answer.headers["Retry-After"] == "5"
                    return answer.status_code

            return await asyncio.gather(*(one(s, n) for s in sources for n in names))

        sampler = PrioritySampler(node.pid)
        sampler.start()
        try:
            statuses = asyncio.run(flood())
        finally:
            sampler.done.set()
            sampler.join(10)
        log = node.log()
        # The service still answers (and the right password still works) after the flood.
        with web_client(node, source="127.0.0.99") as owner:
            assert admin_login(owner).status_code == 303
    assert set(statuses) <= {401, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(401) >= 1, statuses
    assert "dashboard logins refused, hashing pool full" in log
    # The event loop (the main thread) stays at normal priority. The hashing ran niced: the
    # pool's worker and argon2's lane threads, which it starts for every check (parallelism 4).
    assert sampler.seen[main_thread] == 0
    niced = [tid for tid, nice in sampler.seen.items() if nice >= 10]
    assert len(niced) >= 2, sampler.seen
