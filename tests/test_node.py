"""A whole node (store + recorder + host + web) and several nodes sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kmsgate.config.settings import ServeSettings
from kmsgate.node import Node, load_web_secret
from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.messages import encode_request
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.recording.inline import InlineWriter
from kmsgate.recording.process import WriterProcess
from kmsgate.store.database import Store
from kmsgate.store.records import ClientRow
from tests.server.test_serve_cli import KMSGATE, wait_listening
from tests.store.test_writer_process import drafts
from tests.support.kms import RawClient, activate_once, make_request
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer, running_postgres

pytestmark = pytest.mark.integration


def node_settings(db: str, tmp_path: Path, **overrides: object) -> ServeSettings:
    base: dict[str, object] = {
        "listen": ["127.0.0.1:0"],
        "web": "127.0.0.1:0",
        "db": db,
        "data_dir": tmp_path,
        "node_name": "node-a",
    }
    base.update(overrides)
    return ServeSettings(**base)  # type: ignore[arg-type]


async def wait_for_client(store: Store, cmid: uuid.UUID, timeout: float = 5.0) -> ClientRow:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await store.get_client(cmid)
        if row is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"client {cmid} never reached the store")


def metric_value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


WRITERS = {"process": WriterProcess, "inline": InlineWriter}


@pytest.mark.parametrize("writer", sorted(WRITERS))
async def test_activation_is_recorded_and_counted(tmp_path: Path, writer: str) -> None:
    settings = node_settings(f"sqlite:///{tmp_path / 'kms.db'}", tmp_path, store_writer=writer)
    async with Node(settings) as service:
        assert service.host is not None and service.store is not None
        assert type(service.writer) is WRITERS[writer]
        result = await activate_once(service.host.port, 6)
        row = await wait_for_client(service.store, result.response.client_machine_id)
        assert row.machine_name == "test-pc.example.test"
        assert row.sku_name == "Windows Server 2019 Datacenter"
        assert (row.last_protocol, row.request_count, row.last_address) == (6, 1, "127.0.0.1")
        assert row.last_epid == result.response.epid
        history = await service.store.client_history(row.cmid)
        assert [(a.result, a.node, a.hresult) for a in history.items] == [
            ("activated", "node-a", 0)
        ]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.web_port}") as web:
            # The writer's status (written count) may come a moment after the row is stored.
            deadline = time.monotonic() + 10
            while True:
                response = await web.get("/metrics")
                assert response.status_code == 200
                text = response.text
                written = metric_value(text, "kmsgate_store_written_records_total")
                if written >= 1 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
    labels = {"family": "windows-server", "protocol": "v6", "result": "activated"}
    assert metric_value(text, "kmsgate_activations_total", **labels) == 1
    assert metric_value(text, "kmsgate_store_written_records_total") >= 1
    assert metric_value(text, "kmsgate_request_duration_seconds_count") == 1


async def test_store_flush_interval_reaches_the_writer(tmp_path: Path) -> None:
    settings = node_settings(
        f"sqlite:///{tmp_path / 'kms.db'}", tmp_path, no_web=True, store_flush_interval=0.8
    )
    async with Node(settings) as service:
        assert service.writer is not None
        assert service.writer.flush_interval == 0.8
    with pytest.raises(ValueError, match="less than or equal to 1"):
        node_settings("sqlite://", tmp_path, store_flush_interval=5)


@pytest.mark.parametrize("writer", sorted(WRITERS))
async def test_refusals_are_recorded_too(tmp_path: Path, writer: str) -> None:
    settings = node_settings(
        f"sqlite:///{tmp_path / 'kms.db'}", tmp_path, no_web=True, store_writer=writer
    )
    async with Node(settings) as service:
        assert service.host is not None and service.store is not None
        client = await RawClient.connect(service.host.port)
        await client.bind()
        message = encode_request(make_request(4))
        bad = message[:-1] + bytes([message[-1] ^ 1])  # wrong v4 MAC
        client.writer.write(
            rpc.encode_pdu(rpc.Request(2, 0, 0, ndr.wrap_request(bad, TransferSyntax.NDR32)))
        )
        await client.read_pdu()
        await client.close()
        deadline = time.monotonic() + 5
        page = await service.store.list_activations(result="refused")
        while not page.items and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            page = await service.store.list_activations(result="refused")
        assert [(a.hresult, a.protocol) for a in page.items] == [(0x8007000D, 4)]
        assert service.web_port is None


def test_web_secret_is_created_once_and_private(tmp_path: Path) -> None:
    first = load_web_secret(tmp_path)
    assert load_web_secret(tmp_path) == first and len(first) == 32
    assert (tmp_path / "web-secret.key").stat().st_mode & 0o777 == 0o600


def test_sigkill_one_second_after_the_answer_loses_no_record(tmp_path: Path) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path / 'kms.db'}"
    proc = subprocess.Popen(
        [str(KMSGATE), "serve", "--listen", f"127.0.0.1:{port}", "--no-web", "--db", db,
         "--data-dir", str(tmp_path), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(proc, port)
        results = [asyncio.run(activate_once(port, version)) for version in (4, 5, 6)]
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()

    async def stored() -> list[ClientRow | None]:
        store = await Store.open(db, upgrade=False)
        try:
            return [await store.get_client(r.response.client_machine_id) for r in results]
        finally:
            await store.close()

    rows = asyncio.run(stored())
    assert all(row is not None and row.request_count == 1 for row in rows)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


async def test_two_nodes_share_one_postgresql(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database(f"nodes_{uuid.uuid4().hex[:8]}")
    node_a = Node(node_settings(url, tmp_path / "a", node_name="node-a", no_web=True))
    node_b = Node(node_settings(url, tmp_path / "b", node_name="node-b", no_web=True))
    async with node_a, node_b:
        assert node_a.host is not None and node_b.host is not None
        assert node_a.store is not None
        first = await activate_once(node_a.host.port, 6)
        second = await activate_once(node_b.host.port, 5)
        row_a = await wait_for_client(node_a.store, first.response.client_machine_id)
        row_b = await wait_for_client(node_a.store, second.response.client_machine_id)
        assert (row_a.last_protocol, row_b.last_protocol) == (6, 5)
        nodes = set()
        deadline = time.monotonic() + 5
        while len(nodes) < 2 and time.monotonic() < deadline:
            page = await node_a.store.list_activations()
            nodes = {a.node for a in page.items}
            await asyncio.sleep(0.05)
        assert nodes == {"node-a", "node-b"}
        stats = await node_a.store.stats(datetime.now(UTC))
        assert stats.clients == 2 and stats.activations == 2


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "web.pem", tmp_path / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_web_listener_speaks_https_with_secure_cookies(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings = node_settings(
        f"sqlite:///{tmp_path / 'kms.db'}", tmp_path, web_cert=cert, web_key=key, gateway=True
    )
    async with Node(settings) as service:
        base = f"https://127.0.0.1:{service.web_port}"
        trusted = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=base, verify=trusted) as web:
            assert (await web.get("/healthz")).status_code == 200
            portal = await web.get("/")
            assert portal.status_code == 200
            cookies = portal.headers.get_list("set-cookie")
            assert cookies and all("Secure" in c for c in cookies)
            assert "max-age" in portal.headers.get("strict-transport-security", "")
        async with httpx.AsyncClient(base_url=base.replace("https", "http")) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/healthz")


async def test_a_reload_reaches_the_writer_process_log_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = node_settings(
        f"sqlite:///{tmp_path / 'kms.db'}", tmp_path, no_web=True, store_writer="process"
    )
    caplog.set_level(logging.WARNING, logger="kmsgate")
    async with Node(settings) as service:
        caplog.set_level(logging.INFO, logger="kmsgate")  # what a reloaded log_level does
        service.reload(settings)
    assert any("record writer process done" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("writer", sorted(WRITERS))
async def test_a_failed_start_undoes_what_it_started(tmp_path: Path, writer: str) -> None:
    """The web port is taken: the KMS listener, the writer (and its child) and the store close."""
    kms_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = node_settings(
            f"sqlite:///{tmp_path / 'kms.db'}",
            tmp_path,
            listen=[f"127.0.0.1:{kms_port}"],
            web=f"127.0.0.1:{taken.getsockname()[1]}",
            store_writer=writer,
        )
        node = Node(settings)
        with pytest.raises(OSError, match="web listener"):
            await node.start()
    assert node.host is not None and node.host.addresses == []
    with socket.socket() as again:  # nothing listens on the KMS port any more
        again.bind(("127.0.0.1", kms_port))
    if isinstance(node.writer, WriterProcess):
        assert not node.writer.submit(drafts(1)[0])  # closed
        assert node.writer.pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(node.writer.pid, 0)
    else:
        assert isinstance(node.writer, InlineWriter)
        assert not node.writer.submit(drafts(1)[0])  # closed
    await node.stop()  # a second stop finds nothing left to undo
