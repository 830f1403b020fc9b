"""Tools for attacking the KMS host: a real `kmsgate serve`, requests with any field values,
pipelined connections, and readers for what the host logged, counted and stored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kmsgate.catalog import default_catalog
from kmsgate.protocol import crypto, ndr, rpc
from kmsgate.protocol.client_session import ClientSession
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.messages import KmsRequest
from kmsgate.protocol.ndr import TransferSyntax
from tests.support.ports import free_port

KMSGATE = Path(sys.executable).with_name("kmsgate")
NAME_FIELD = slice(108, 236)  # the 128-byte UTF-16 machine name in the 236-byte base request
WIN_PRO = default_catalog().resolve_product("Windows 10/11 Pro")


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------- a real `kmsgate serve`


@dataclass
class Serve:
    """One `kmsgate serve` process on loopback, logging JSON into a file of its data dir."""

    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    web_port: int | None

    @classmethod
    def start(cls, data_dir: Path, *args: str, web: bool = False, timeout: float = 30) -> Serve:
        port = free_port()
        web_port = free_port() if web else None
        data_dir.mkdir(parents=True, exist_ok=True)
        log_file = str(data_dir / "log.json")
        cmd = [str(KMSGATE), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
               str(data_dir), "--log-format", "json", "--log-file", log_file]  # fmt: skip
        cmd += ["--web", f"127.0.0.1:{web_port}"] if web_port else ["--no-web"]
        proc = subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        serve = cls(proc, port, data_dir, web_port)
        deadline = time.monotonic() + timeout
        for wanted in [port] + ([web_port] if web_port else []):
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise AssertionError(f"kmsgate serve exited: {err}{serve.log_text()}")
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", wanted)) == 0:
                        break
                assert time.monotonic() < deadline, "kmsgate serve did not start listening"
                time.sleep(0.05)
        return serve

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def db_path(self) -> Path:
        return self.data_dir / "kmsgate.db"

    def log_text(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.data_dir / "log.json").read_text(errors="replace")
        return ""

    def log_records(self) -> list[dict[str, object]]:
        """The log's records so far; a line the node is still writing waits for the next read."""
        complete = self.log_text().rpartition("\n")[0]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)) as db:
            return list(db.execute(sql, params))

    def metrics(self) -> str:
        assert self.web_port is not None
        url = f"http://127.0.0.1:{self.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def metric_sum(self, name: str) -> float:
        """Sum of a metric over all its label sets."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the serving process, then wait until its record writer has finished."""
        writers = children(self.pid) if alive(self.pid) else []
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        deadline = time.monotonic() + timeout
        while any(alive(child) for child in writers):
            assert time.monotonic() < deadline, "the record writer did not finish"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def serving(data_dir: Path, *args: str, web: bool = False) -> Iterator[Serve]:
    serve = Serve.start(data_dir, *args, web=web)
    try:
        yield serve
    finally:
        serve.stop()


# ---------------------------------------------------------------- requests with any values


@dataclass(frozen=True)
class Fields:
    """Every field of a KMS request, the machine name as its raw 128 bytes."""

    version: int = 6
    cmid: uuid.UUID = field(default_factory=uuid.uuid4)
    request_time: int = field(default_factory=lambda: filetime_from_unix(time.time()))
    n_count: int = 25
    license_status: int = 2
    raw_name: bytes = "LAB-PC".encode("utf-16-le").ljust(128, b"\0")
    is_client_vm: int = 0
    grace_time: int = 43200
    application_id: uuid.UUID = WIN_PRO.application_id
    sku_id: uuid.UUID = WIN_PRO.id
    kms_id: uuid.UUID = WIN_PRO.kms_id

    def base(self) -> bytes:
        """The 236-byte base request, name bytes exactly as given."""
        request = KmsRequest(
            major_version=self.version,
            application_id=self.application_id,
            sku_id=self.sku_id,
            kms_counted_id=self.kms_id,
            client_machine_id=self.cmid,
            required_client_count=self.n_count,
            request_time=self.request_time,
            machine_name="",
            is_client_vm=self.is_client_vm,
            license_status=self.license_status,
            grace_time=self.grace_time,
        )
        base = bytearray(request.to_bytes())
        base[NAME_FIELD] = self.raw_name.ljust(128, b"\0")[:128]
        return bytes(base)

    def message(self, iv: bytes | None = None) -> bytes:
        """The request message: v4 with its MAC, v5/v6 encrypted under `iv`."""
        base = self.base()
        if self.version == 4:
            return base + crypto.kms_v4_mac(base)
        iv = iv if iv is not None else os.urandom(16)
        cipher = crypto.cipher_for_version(self.version)
        return (
            struct.pack("<HH", 0, self.version)
            + iv
            + cipher.cbc_encrypt(iv, crypto.pkcs7_pad(base))
        )

    def machine_name(self) -> str:
        """The name a host must record: up to the first UTF-16 NUL, invalid units replaced."""
        raw = self.raw_name.ljust(128, b"\0")[:128]
        units = [raw[i : i + 2] for i in range(0, 128, 2)]
        end = units.index(b"\0\0") if b"\0\0" in units else 64
        return b"".join(units[:end]).decode("utf-16-le", "replace")


def bind_pdu() -> bytes:
    """A vlmcs-style bind; context 0 is NDR32."""
    client = ClientSession()
    client.send_bind()
    return client.data_to_send()


def request_pdu(call_id: int, message: bytes) -> bytes:
    stub = ndr.wrap_request(message, TransferSyntax.NDR32)
    return rpc.encode_pdu(rpc.Request(call_id, 0, 0, stub))


@dataclass(frozen=True)
class Answer:
    call_id: int
    hresult: int
    served: bool


class PduReader:
    """Splits a byte stream from the host into PDUs."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while len(self._buffer) >= rpc.HEADER_SIZE:
            length = int.from_bytes(self._buffer[8:10], "little")
            if len(self._buffer) < length:
                return
            pdu = bytes(self._buffer[:length])
            del self._buffer[:length]
            yield pdu


def answer_of(pdu: bytes) -> Answer | None:
    """The answer a response PDU carries; None for bind acks."""
    decoded = rpc.decode_pdu(pdu)
    if isinstance(decoded, rpc.BindAck):
        return None
    if not isinstance(decoded, rpc.Response):
        raise AssertionError(f"unexpected {type(decoded).__name__} from the host")
    stub = ndr.unwrap_response(decoded.stub, TransferSyntax.NDR32)
    return Answer(decoded.call_id, stub.hresult, stub.message is not None)


class BlockingKmsConnection:
    """One connection sending requests one at a time (blocking socket, bounded waits)."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout, (source, 0))
        self._reader = PduReader()
        self._pdus: list[bytes] = []
        self._call_id = 2

    def _next_pdu(self) -> bytes:
        while not self._pdus:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the host closed the connection")
            self._pdus.extend(self._reader.feed(data))
        return self._pdus.pop(0)

    def bind(self) -> None:
        self.sock.sendall(bind_pdu())
        assert answer_of(self._next_pdu()) is None

    def ask(self, message: bytes) -> Answer:
        self._call_id += 1
        self.sock.sendall(request_pdu(self._call_id, message))
        answer = answer_of(self._next_pdu())
        assert answer is not None and answer.call_id == self._call_id
        return answer

    def closed_by_host(self, timeout: float = 10) -> bool:
        """Whether the host closes this connection within `timeout` (reading what it sends)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- load


@dataclass
class Received:
    """What clients got answers for, by CMID."""

    served: set[uuid.UUID] = field(default_factory=set)
    refused: set[uuid.UUID] = field(default_factory=set)

    @property
    def count(self) -> int:
        return len(self.served) + len(self.refused)


async def pipelined_connection(
    port: int,
    requests: Iterable[Fields],
    received: Received,
    *,
    batch: int = 64,
    source: str = "127.0.0.1",
) -> None:
    """Send requests `batch` at a time without waiting, read every answer; stops quietly
    when the host goes away. Answers are noted by the CMID of the request they answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        return  # the host is gone, or refused us
    pdus = PduReader()
    asked: dict[int, uuid.UUID] = {}
    call_id = 2
    try:
        writer.write(bind_pdu())
        pending = list(requests)
        bound = False
        while pending or asked or not bound:
            if bound and len(asked) < batch and pending:
                chunk, pending = pending[:batch], pending[batch:]
                out = bytearray()
                for fields in chunk:
                    call_id += 1
                    asked[call_id] = fields.cmid
                    out += request_pdu(call_id, fields.message())
                writer.write(bytes(out))
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data:
                return
            for pdu in pdus.feed(data):
                answer = answer_of(pdu)
                if answer is None:
                    bound = True
                    continue
                cmid = asked.pop(answer.call_id)
                (received.served if answer.served else received.refused).add(cmid)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def v4_flood_chunk(count: int) -> bytes:
    """`count` pipelined v4 request PDUs from distinct machines (v4: no cipher to pay)."""
    return b"".join(
        request_pdu(
            index + 3, Fields(version=4, raw_name=f"FLOOD-{index}".encode("utf-16-le")).message()
        )
        for index in range(count)
    )
