"""Publishing the _vlmcs._tcp SRV record by RFC 2136 update, against a real knotd on loopback."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.update
import pytest
import typer
from typer.testing import CliRunner

from kmsgate.cli import dns as dns_cli
from kmsgate.config import loading as config_loading
from kmsgate.config.settings import ServeSettings
from kmsgate.dns.discovery import KmsHostCandidate, discover_kms_hosts
from kmsgate.dns.records import SrvRecord, build_removal, build_update, srv_records
from kmsgate.dns.update import DnsPublishError, publish, server_from_settings, unpublish
from kmsgate.errors import KmsgateError
from kmsgate.server.dns_task import DnsPublisher
from tests.support.dns_server import KnotServer, TsigKey, knot_server
from tests.support.ports import closed_port

pytestmark = pytest.mark.integration

# One zone per test that writes, so tests stay independent on the shared server.
WRITABLE = ("pub", "two", "multi", "same", "auth", "loop", "keep", "cli")
ZONES = dict.fromkeys((f"{label}.test" for label in WRITABLE), "")
Srv = tuple[int, int, int, str]  # priority, weight, port, target


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with knot_server(tmp_path_factory.mktemp("knot"), ZONES) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KMSGATE_* variable or /etc config file may leak into the settings under test."""
    for name in list(os.environ):
        if name.startswith("KMSGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config_loading, "DEFAULT_CONFIG_FILE", tmp_path / "absent.toml")


def make_settings(
    knot: KnotServer, domain: str, host: str, *, key: TsigKey | None = None, **extra: Any
) -> ServeSettings:
    key = key or knot.tsig
    return ServeSettings(
        dns_domain=domain,
        dns_host=host,
        dns_server=f"{knot.address}:{knot.port}",
        dns_tsig_name=key.name,
        dns_tsig_secret=key.secret,
        **extra,
    )


async def srv_set(knot: KnotServer, domain: str) -> set[Srv]:
    """What a client now sees at _vlmcs._tcp.<domain> (dig-equivalent)."""
    try:
        answer = await knot.resolver().resolve(f"_vlmcs._tcp.{domain}.", "SRV")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return set()
    return {(rd.priority, rd.weight, rd.port, rd.target.to_text()) for rd in answer}


async def srv_ttl(knot: KnotServer, domain: str) -> int:
    answer = await knot.resolver().resolve(f"_vlmcs._tcp.{domain}.", "SRV")
    assert answer.rrset is not None
    return answer.rrset.ttl


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    """Poll an async predicate (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


# ---------------------------------------------------------------------------------
# Pure builders
# ---------------------------------------------------------------------------------


def test_srv_records_lines() -> None:
    lines = srv_records(
        "example.com", "kms1.example.com", 1688, 10, 50, 600, ["2001:db8::5", "10.0.0.5"]
    )
    assert lines == [
        "_vlmcs._tcp.example.com. 600 IN SRV 10 50 1688 kms1.example.com.",
        "kms1.example.com. 600 IN A 10.0.0.5",
        "kms1.example.com. 600 IN AAAA 2001:db8::5",
    ]
    # A short host name is taken relative to the domain; no addresses, no A lines.
    assert srv_records("example.com.", "kms2") == [
        "_vlmcs._tcp.example.com. 3600 IN SRV 0 0 1688 kms2.example.com."
    ]
    # Duplicates collapse; an absolute host elsewhere stays as given.
    assert srv_records("a.test", "kms.b.test.", addresses=["10.0.0.1", "10.0.0.1"]) == [
        "_vlmcs._tcp.a.test. 3600 IN SRV 0 0 1688 kms.b.test.",
        "kms.b.test. 3600 IN A 10.0.0.1",
    ]


@pytest.mark.parametrize(
    ("domain", "host", "kwargs", "message"),
    [
        ("example.com", "10.0.0.5", {}, "not the address"),
        ("example.com", "localhost", {}, "cannot be published"),
        ("example.com", "kms", {"addresses": ["kms.example.com"]}, "not an IPv4 or IPv6"),
        ("example.com", "kms", {"port": 0}, "port 0"),
        ("example.com", "kms", {"weight": 70000}, "weight 70000"),
        (".", "kms.example.com", {}, "root domain"),
        ("", "kms.example.com", {}, "empty domain"),
    ],
)
def test_srv_records_rejects(domain: str, host: str, kwargs: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        srv_records(domain, host, **kwargs)


def _update_rrs(message: dns.update.UpdateMessage) -> set[tuple[str, str, str]]:
    """(owner, "add" or "delete", rdata) of each RR in the update section."""
    return {
        (rrset.name.to_text(), "delete" if rrset.deleting else "add", rd.to_text())
        for rrset in message.update
        for rd in rrset
    }


def test_build_update_touches_only_this_target() -> None:
    record = SrvRecord.make("example.com", "kms1.example.com", 1700, 1, 2, 300)
    existing = [
        SrvRecord.make("example.com", "kms1.example.com", 1688).rdata,
        SrvRecord.make("example.com", "other.example.com", 1688).rdata,
    ]
    message = build_update(record, existing=existing)
    assert message.origin == dns.name.from_text("example.com")
    owner = "_vlmcs._tcp.example.com."
    assert _update_rrs(message) == {
        (owner, "delete", "0 0 1688 kms1.example.com."),  # delete own old rdata
        (owner, "add", "1 2 1700 kms1.example.com."),  # add the current one
    }
    assert message.keyring is None
    signed = build_update(record, zone="com", keyring=TsigKey.generate().dnspython_key())
    assert signed.origin == dns.name.from_text("com")
    assert signed.keyring is not None


def test_build_removal_touches_only_this_target() -> None:
    record = SrvRecord.make("example.com", "kms1.example.com", 1700)
    existing = [
        SrvRecord.make("example.com", "kms1.example.com", 1688, 5).rdata,
        SrvRecord.make("example.com", "other.example.com", 1700).rdata,
    ]
    owner = "_vlmcs._tcp.example.com."
    assert _update_rrs(build_removal(record, existing=existing)) == {
        (owner, "delete", "0 0 1700 kms1.example.com."),
        (owner, "delete", "5 0 1688 kms1.example.com."),
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("::1", ("::1", 53)),
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("ns1.example.test", ("ns1.example.test", 53)),
        ("ns1.example.test:5300", ("ns1.example.test", 5300)),
    ],
)
def test_server_from_settings(text: str, expected: tuple[str, int]) -> None:
    assert server_from_settings(ServeSettings(dns_server=text)) == expected


@pytest.mark.parametrize("text", ["53", "127.0.0.1:0", "127.0.0.1:x"])
def test_server_from_settings_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"DNS server|port"):
        server_from_settings(ServeSettings(dns_server=text))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"dns_tsig_secret": "not base64!"}, "base64"),
        ({"dns_tsig_algorithm": "hmac-sha999"}, "unknown TSIG algorithm"),
        ({"dns_domain": None}, "--dns-domain"),
        ({"dns_server": None}, "--dns-server"),
        ({"dns_host": "192.0.2.7"}, "not the address"),
    ],
)
async def test_bad_settings_fail_before_any_io(extra: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {
        "dns_domain": "pub.test",
        "dns_host": "kms.pub.test",
        "dns_server": "127.0.0.1:9",  # discard port: never contacted
        "dns_tsig_name": "k.",
        "dns_tsig_secret": "c2VjcmV0",
    }
    values.update(extra)
    with pytest.raises(DnsPublishError, match=message) as info:
        await publish(ServeSettings(**values))
    assert isinstance(info.value, KmsgateError)
    assert info.value.rcode is None


# ---------------------------------------------------------------------------------
# Against knotd
# ---------------------------------------------------------------------------------


async def test_publish_is_seen_by_queries_and_discovery(knot: KnotServer) -> None:
    settings = make_settings(
        knot, "pub.test", "kms1.pub.test", dns_port=11688, dns_priority=5, dns_weight=20
    )
    result = await publish(settings)
    assert result.zone == dns.name.from_text("pub.test")
    assert result.server == (knot.address, knot.port)
    assert result.removed == ()
    assert await srv_set(knot, "pub.test") == {(5, 20, 11688, "kms1.pub.test.")}
    assert await srv_ttl(knot, "pub.test") == 3600
    found = await discover_kms_hosts("pub.test", resolver=knot.resolver())
    assert found == [KmsHostCandidate("kms1.pub.test", 11688, 5, 20)]


async def test_hosts_coexist_republish_and_unpublish_touch_only_their_own(
    knot: KnotServer,
) -> None:
    one = make_settings(knot, "two.test", "kms1.two.test")
    two = make_settings(knot, "two.test", "kms2.two.test", dns_port=1689, dns_priority=10)
    await publish(one)
    await publish(two)
    assert await srv_set(knot, "two.test") == {
        (0, 0, 1688, "kms1.two.test."),
        (10, 0, 1689, "kms2.two.test."),
    }

    # Host one moves to another port and weight: its old record goes, host two's stays.
    moved = make_settings(knot, "two.test", "kms1.two.test", dns_port=1700, dns_weight=5)
    result = await publish(moved)
    assert result.removed == ("0 0 1688 kms1.two.test.",)
    assert await srv_set(knot, "two.test") == {
        (0, 5, 1700, "kms1.two.test."),
        (10, 0, 1689, "kms2.two.test."),
    }
    found = await discover_kms_hosts("two.test", resolver=knot.resolver())
    assert [(c.host, c.port) for c in found] == [("kms1.two.test", 1700), ("kms2.two.test", 1689)]

    # Unpublishing with the old settings still finds this host's record by its target.
    removed = await unpublish(one)
    assert removed.removed == ("0 5 1700 kms1.two.test.",)
    assert await srv_set(knot, "two.test") == {(10, 0, 1689, "kms2.two.test.")}
    # Again: nothing of ours is left, nothing else is touched.
    assert (await unpublish(one)).removed == ()
    await unpublish(two)
    assert await srv_set(knot, "two.test") == set()


async def test_domain_below_the_zone_apex(knot: KnotServer) -> None:
    settings = make_settings(knot, "branch.multi.test", "kms")
    result = await publish(settings)
    assert result.zone == dns.name.from_text("multi.test")  # found from the server's SOA
    assert await srv_set(knot, "branch.multi.test") == {(0, 0, 1688, "kms.branch.multi.test.")}
    await unpublish(settings)
    assert await srv_set(knot, "branch.multi.test") == set()


async def test_republish_same_record_keeps_one_and_updates_ttl(knot: KnotServer) -> None:
    await publish(make_settings(knot, "same.test", "kms.same.test"))
    result = await publish(make_settings(knot, "same.test", "kms.same.test", dns_ttl=120))
    assert result.removed == ()
    assert await srv_set(knot, "same.test") == {(0, 0, 1688, "kms.same.test.")}
    assert await srv_ttl(knot, "same.test") == 120


async def test_wrong_tsig_secret_is_notauth(knot: KnotServer) -> None:
    wrong = TsigKey.generate(name=knot.tsig.name, algorithm=knot.tsig.algorithm)
    for action in (publish, unpublish):
        with pytest.raises(DnsPublishError, match="NOTAUTH") as info:
            await action(make_settings(knot, "auth.test", "kms.auth.test", key=wrong))
        assert info.value.rcode == "NOTAUTH"
        assert "BADSIG" in str(info.value)
    unknown = TsigKey.generate(name="no-such-key.", algorithm=knot.tsig.algorithm)
    with pytest.raises(DnsPublishError, match="NOTAUTH") as info:
        await publish(make_settings(knot, "auth.test", "kms.auth.test", key=unknown))
    assert "BADKEY" in str(info.value)
    assert await srv_set(knot, "auth.test") == set()


async def test_unsigned_update_is_refused(knot: KnotServer) -> None:
    settings = ServeSettings(
        dns_domain="auth.test", dns_host="kms.auth.test", dns_server=f"127.0.0.1:{knot.port}"
    )
    with pytest.raises(DnsPublishError) as info:
        await publish(settings)
    # Knot answers NOTAUTH when no ACL matches; other servers say REFUSED.
    assert info.value.rcode in {"NOTAUTH", "REFUSED"}
    assert info.value.rcode in str(info.value)
    assert "auth.test" in str(info.value)
    assert await srv_set(knot, "auth.test") == set()


async def test_unreachable_server_fails_fast() -> None:
    port = closed_port()
    settings = ServeSettings(
        dns_domain="pub.test", dns_host="kms.pub.test", dns_server=f"127.0.0.1:{port}"
    )
    started = time.monotonic()
    with pytest.raises(DnsPublishError, match=f"cannot reach DNS server 127.0.0.1:{port}"):
        await publish(settings, timeout=3)
    assert time.monotonic() - started < 1.5


async def test_silent_server_times_out() -> None:
    with socket.socket() as listener:  # accepts TCP (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        settings = ServeSettings(
            dns_domain="pub.test", dns_host="kms.pub.test", dns_server=f"127.0.0.1:{port}"
        )
        started = time.monotonic()
        with pytest.raises(DnsPublishError, match=r"timed out after 0\.3 s"):
            await publish(settings, timeout=0.3)
        assert time.monotonic() - started < 2


async def test_publisher_refreshes_then_unpublishes(knot: KnotServer) -> None:
    other = make_settings(knot, "loop.test", "other.loop.test")
    await publish(other)
    publisher = DnsPublisher(make_settings(knot, "loop.test", "kms.loop.test"), interval=0.2)
    mine = (0, 0, 1688, "kms.loop.test.")
    await publisher.start()
    try:
        assert publisher.running

        async def published() -> bool:
            return mine in await srv_set(knot, "loop.test")

        await wait_for(published)
        # Someone deletes our record; the second refresh after that surely puts it back.
        removed = await unpublish(make_settings(knot, "loop.test", "kms.loop.test"))
        assert removed.removed == ("0 0 1688 kms.loop.test.",)
        count = publisher.published

        async def refreshed_twice() -> bool:
            return publisher.published >= count + 2

        await wait_for(refreshed_twice)
        assert mine in await srv_set(knot, "loop.test")
        assert publisher.failures == 0
    finally:
        await publisher.stop()
    assert not publisher.running
    assert await srv_set(knot, "loop.test") == {(0, 0, 1688, "other.loop.test.")}
    await publisher.stop()  # idempotent


async def test_publisher_stop_without_unpublish_keeps_the_record(knot: KnotServer) -> None:
    publisher = DnsPublisher(make_settings(knot, "keep.test", "kms.keep.test"), interval=60)
    await publisher.start()
    try:

        async def published() -> bool:
            return publisher.published == 1

        await wait_for(published)
    finally:
        await publisher.stop(unpublish=False)
    assert await srv_set(knot, "keep.test") == {(0, 0, 1688, "kms.keep.test.")}


async def test_publisher_survives_failures_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    settings = ServeSettings(
        dns_domain="pub.test", dns_host="kms.pub.test", dns_server=f"127.0.0.1:{port}"
    )
    publisher = DnsPublisher(settings, interval=0.4, retry_delay=0.05, timeout=1)
    caplog.set_level(logging.WARNING, logger="kmsgate.server.dns")
    await publisher.start()
    try:

        async def retried() -> bool:
            return publisher.failures >= 3

        await wait_for(retried)
        assert publisher.running  # still alive after failures
    finally:
        await publisher.stop()  # the failing unpublish is only logged
    assert publisher.published == 0
    assert publisher.last_error is not None
    assert "cannot reach DNS server" in publisher.last_error
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        m.startswith("cannot publish the DNS SRV record: cannot reach DNS server")
        and m.endswith("retrying in 0.05 s")
        for m in messages
    )
    assert any("cannot remove the DNS SRV record" in m for m in messages)


# ---------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(dns_cli.app)
    return app


def test_cli_record_prints_exact_lines(cli: typer.Typer) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "dns", "record", "--domain", "example.com", "--host", "kms1.example.com",
            "--port", "1700", "--ttl", "600", "--priority", "10", "--weight", "60",
            "--address", "10.0.0.5", "--address", "2001:db8::5",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "_vlmcs._tcp.example.com. 600 IN SRV 10 60 1700 kms1.example.com.\n"
        "kms1.example.com. 600 IN A 10.0.0.5\n"
        "kms1.example.com. 600 IN AAAA 2001:db8::5\n"
    )


def test_cli_record_resolves_the_host(cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fake_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        stream = socket.SOCK_STREAM
        return [
            (socket.AF_INET, stream, 6, "", ("10.0.0.9", 0)),
            (socket.AF_INET6, stream, 6, "", ("fd00::9", 0, 0, 0)),
            (socket.AF_INET, stream, 6, "", ("127.0.1.1", 0)),
        ]

    monkeypatch.setattr(dns_cli.socket, "getaddrinfo", fake_getaddrinfo)
    result = CliRunner().invoke(cli, ["dns", "record", "--domain", "example.com", "--host", "kms"])
    assert result.exit_code == 0, result.output
    assert asked == ["kms.example.com"]
    assert result.stdout == (
        "_vlmcs._tcp.example.com. 3600 IN SRV 0 0 1688 kms.example.com.\n"
        "kms.example.com. 3600 IN A 10.0.0.9\n"
        "kms.example.com. 3600 IN AAAA fd00::9\n"
    )
    assert "skipped loopback address 127.0.1.1" in result.stderr


def test_cli_record_errors(cli: typer.Typer) -> None:
    result = CliRunner().invoke(
        cli, ["dns", "record", "--domain", "example.com", "--host", "192.0.2.1"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: SRV target must be a host name")
    result = CliRunner().invoke(
        cli,
        ["dns", "record", "--domain", "example.com", "--host", "kms", "--address", "nope"],
    )
    assert result.exit_code == 1
    assert result.stderr == "error: 'nope' is not an IPv4 or IPv6 address\n"


def test_cli_publish_unpublish_round_trip(
    cli: typer.Typer, knot: KnotServer, tmp_path: Path
) -> None:
    # File < env < CLI: the file names the server and key, the env a port, the CLI the host.
    config = tmp_path / "kmsgate.toml"
    config.write_text(
        f'dns_domain = "cli.test"\n'
        f'dns_server = "{knot.address}:{knot.port}"\n'
        f'dns_tsig_name = "{knot.tsig.name}"\n'
        f'dns_tsig_secret = "{knot.tsig.secret}"\n'
        f"dns_port = 1111\n"
        f'dns_host = "file.cli.test"\n',
        encoding="utf-8",
    )
    runner = CliRunner(env={"KMSGATE_DNS_PORT": "2222"})
    args = ["--config", str(config), "--dns-host", "kms.cli.test", "--dns-priority", "3"]
    result = runner.invoke(cli, ["dns", "publish", *args])
    assert result.exit_code == 0, result.output
    assert result.stdout == "published _vlmcs._tcp.cli.test. 3600 IN SRV 3 0 2222 kms.cli.test.\n"
    assert asyncio.run(srv_set(knot, "cli.test")) == {(3, 0, 2222, "kms.cli.test.")}

    result = runner.invoke(cli, ["dns", "publish", *args, "--dns-port", "3333"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "published _vlmcs._tcp.cli.test. 3600 IN SRV 3 0 3333 kms.cli.test. "
        "(replaced 3 0 2222 kms.cli.test.)\n"
    )

    result = runner.invoke(cli, ["dns", "unpublish", *args])
    assert result.exit_code == 0, result.output
    assert result.stdout == "removed _vlmcs._tcp.cli.test. SRV 3 0 3333 kms.cli.test.\n"
    assert asyncio.run(srv_set(knot, "cli.test")) == set()
    result = runner.invoke(cli, ["dns", "unpublish", *args])
    assert result.stdout == "_vlmcs._tcp.cli.test. held no record for kms.cli.test.\n"


def test_cli_publish_errors(cli: typer.Typer, knot: KnotServer) -> None:
    wrong = TsigKey.generate(name=knot.tsig.name)
    server = f"{knot.address}:{knot.port}"
    common = ["--dns-domain", "cli.test", "--dns-server", server, "--dns-host", "kms.cli.test"]
    result = CliRunner().invoke(
        cli,
        [
            "dns",
            "publish",
            *common,
            "--dns-tsig-name",
            wrong.name,
            "--dns-tsig-secret",
            wrong.secret,
        ],
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: DNS server {server} answered NOTAUTH")
    assert result.stdout == ""

    result = CliRunner().invoke(cli, ["dns", "publish", "--dns-server", server])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --dns-domain is needed")

    result = CliRunner().invoke(cli, ["dns", "unpublish", *common, "--dns-tsig-name", "k."])
    assert result.exit_code == 2
    assert "--dns-tsig-name and --dns-tsig-secret go together" in result.stderr
