"""KMS host discovery via DNS SRV: RFC 2782 ordering and lookups against a real knotd."""

from __future__ import annotations

import random
import socket
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dns.asyncquery
import dns.asyncresolver
import dns.name
import dns.rcode
import dns.rdata
import dns.tsig
import dns.update
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmsgate.dns.discovery import (
    DiscoveryError,
    KmsHostCandidate,
    discover_kms_hosts,
    order_srv_records,
    srv_name,
)
from kmsgate.errors import KmsgateError
from tests.support import dns_server
from tests.support.dns_server import KnotServer, TsigKey, knot_server

pytestmark = pytest.mark.integration

C = KmsHostCandidate

# ---------------------------------------------------------------------------------
# Zones served by knotd
# ---------------------------------------------------------------------------------

EXAMPLE_RECORDS = {
    C("primary.example.test", 16880, 5, 100),
    C("kms1.example.test", 1688, 10, 60),
    C("kms2.example.test", 1689, 10, 30),
    C("kms3.example.test", 1690, 10, 0),
    C("backup.example.test", 1688, 20, 0),
}

ZONES = {
    "example.test": "".join(
        f"_vlmcs._tcp IN SRV {c.priority} {c.weight} {c.port} {c.host}.\n"
        for c in sorted(EXAMPLE_RECORDS, key=lambda c: c.host)
    )
    + """\
primary IN A    127.0.0.11
kms1    IN A    127.0.0.12
kms1    IN AAAA ::1
kms2    IN A    127.0.0.13
kms3    IN AAAA ::1
backup  IN A    127.0.0.14
""",
    # RFC 2782: a lone record with target "." says the service is not offered here.
    "nosvc.test": "_vlmcs._tcp IN SRV 0 0 0 .\n",
    # The SRV owner exists but holds no SRV record.
    "txtonly.test": '_vlmcs._tcp IN TXT "no kms here"\n',
    # Empty zone, filled by the RFC 2136 dynamic-update test.
    "dyn.test": "",
}


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with knot_server(tmp_path_factory.mktemp("knot"), ZONES) as server:
        yield server


# ---------------------------------------------------------------------------------
# srv_name
# ---------------------------------------------------------------------------------


def test_srv_name() -> None:
    assert srv_name("example.com") == "_vlmcs._tcp.example.com."
    assert srv_name("example.com.") == "_vlmcs._tcp.example.com."
    assert srv_name("Corp.Example.COM") == "_vlmcs._tcp.Corp.Example.COM."


@pytest.mark.parametrize("bad", ["", ".", "   ", "a..b", "x" * 64 + ".com"])
def test_srv_name_rejects_invalid(bad: str) -> None:
    with pytest.raises(ValueError):
        srv_name(bad)


def test_discovery_error_is_a_kmsgate_error() -> None:
    assert issubclass(DiscoveryError, KmsgateError)


# ---------------------------------------------------------------------------------
# order_srv_records: dnspython's RFC 2782 processing order, drawn from `random`
# ---------------------------------------------------------------------------------


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the `random` module dnspython draws from; its state is restored afterwards."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def ordered_with(seed: int, records: Sequence[KmsHostCandidate], **kwargs: bool) -> list[C]:
    with seeded(seed):
        return order_srv_records(records, **kwargs)


def test_priority_ascending() -> None:
    records = [C("c", 1, 30, 5), C("a", 1, 10, 5), C("b", 1, 20, 5), C("a2", 1, 10, 5)]
    for seed in range(50):
        ordered = ordered_with(seed, records)
        assert [c.priority for c in ordered] == [10, 10, 20, 30]
        assert {c.host for c in ordered[:2]} == {"a", "a2"}
        assert [c.host for c in ordered[2:]] == ["b", "c"]


def _first_pick_ratio(records: list[KmsHostCandidate], host: str, seeds: int) -> float:
    firsts = Counter(ordered_with(s, records)[0].host for s in range(seeds))
    return firsts[host] / seeds


def test_weight_distribution_90_10() -> None:
    records = [C("heavy", 1688, 0, 90), C("light", 1688, 0, 10)]
    # Selection proportional to weight: "heavy" is first with p = 0.9.
    ratio = _first_pick_ratio(records, "heavy", 3000)
    assert 0.87 <= ratio <= 0.93
    # Input order must not bias the result.
    ratio_reversed = _first_pick_ratio(records[::-1], "heavy", 3000)
    assert 0.87 <= ratio_reversed <= 0.93


def test_weight_proportional_among_three() -> None:
    records = [C("w60", 1688, 0, 60), C("w30", 1688, 0, 30), C("w10", 1688, 0, 10)]
    firsts = Counter(ordered_with(s, records)[0].host for s in range(4000))
    assert 2200 <= firsts["w60"] <= 2600
    assert 1000 <= firsts["w30"] <= 1400
    assert 250 <= firsts["w10"] <= 550
    # Once the first is chosen, the rest are again weighted: w30 follows w60 3 times in 4.
    after_w60 = Counter(
        o[1].host for s in range(4000) if (o := ordered_with(s, records))[0].host == "w60"
    )
    assert 0.68 <= after_w60["w30"] / sum(after_w60.values()) <= 0.82


def test_weight_zero_is_picked_rarely_but_not_never() -> None:
    # RFC 2782: weight 0 records "should have a very small chance of being selected".
    records = [C("zero", 1688, 0, 0), C("ten", 1688, 0, 10)]
    ratio = _first_pick_ratio(records, "zero", 5000)
    assert 0 < ratio <= 0.03  # dnspython weighs them 0.1: about 1 in 100 here
    heavy = [C("zero", 1688, 0, 0), C("big", 1688, 0, 1000)]
    assert _first_pick_ratio(heavy, "zero", 3000) < 0.01


def test_all_zero_weights_are_uniform() -> None:
    records = [C(h, 1688, 0, 0) for h in ("a", "b", "c")]
    firsts = Counter(ordered_with(s, records)[0].host for s in range(3000))
    assert set(firsts) == {"a", "b", "c"}
    for count in firsts.values():
        assert 850 <= count <= 1150


def test_deterministic_given_seeded_random() -> None:
    records = sorted(EXAMPLE_RECORDS, key=lambda c: c.host)
    for seed in range(20):
        assert ordered_with(seed, records) == ordered_with(seed, records)
    orders = {tuple(ordered_with(s, records)) for s in range(50)}
    assert len(orders) > 1  # the order really is random


def test_ignoring_priority_shuffles_everything() -> None:
    records = [C(f"h{i}", 1688, i, 0) for i in range(5)]
    orders = {tuple(ordered_with(s, records, honour_priority=False)) for s in range(100)}
    assert all(sorted(o, key=lambda c: c.host) == records for o in orders)
    assert any([c.priority for c in o] != sorted(c.priority for c in o) for o in orders)
    assert len({o[0].host for o in orders}) == 5


candidates_st = st.lists(
    st.builds(
        C,
        host=st.sampled_from(["a.test", "b.test", "c.test", "d.test"]),
        port=st.integers(0, 65535),
        priority=st.integers(0, 3),
        weight=st.sampled_from([0, 0, 1, 5, 100, 65535]),
    ),
    max_size=12,
)


@given(records=candidates_st, seed=st.integers(0, 2**32 - 1), honour=st.booleans())
def test_order_is_a_permutation_with_non_decreasing_priority(
    records: list[KmsHostCandidate], seed: int, honour: bool
) -> None:
    ordered = ordered_with(seed, records, honour_priority=honour)
    # An RRset holds each record once: duplicates collapse, nothing else is lost.
    assert sorted(ordered, key=repr) == sorted(set(records), key=repr)
    if honour:
        priorities = [c.priority for c in ordered]
        assert priorities == sorted(priorities)
    assert ordered == ordered_with(seed, records, honour_priority=honour)


class _FixedAnswerResolver(dns.asyncresolver.Resolver):
    """Answers every query with the given SRV records, in the given order (no network)."""

    def __init__(self, records: Sequence[str]) -> None:
        super().__init__(configure=False)
        self.records = [dns.rdata.from_text("IN", "SRV", text) for text in records]

    async def resolve(self, *args: object, **kwargs: object) -> list[dns.rdata.Rdata]:  # type: ignore[override]
        return list(self.records)


async def test_discover_result_does_not_depend_on_answer_order() -> None:
    texts = [
        "10 30 1700 b.example.test.",
        "10 30 1600 a.example.test.",
        "10 30 1650 c.example.test.",
        "10 0 1688 z.example.test.",
        "0 0 1688 first.example.test.",
    ]
    for seed in range(10):
        results = []
        for order in (texts, texts[::-1], texts[2:] + texts[:2]):
            with seeded(seed):
                results.append(
                    await discover_kms_hosts("example.test", resolver=_FixedAnswerResolver(order))
                )
        assert results[0] == results[1] == results[2]
        assert results[0][0].host == "first.example.test"


# ---------------------------------------------------------------------------------
# Against knotd on loopback
# ---------------------------------------------------------------------------------


async def test_discover_returns_rfc2782_order(knot: KnotServer) -> None:
    canonical = sorted(EXAMPLE_RECORDS, key=lambda c: (c.priority, c.weight, c.host, c.port))
    for seed in range(5):
        with seeded(seed):
            found = await discover_kms_hosts("example.test", resolver=knot.resolver())
        assert set(found) == EXAMPLE_RECORDS
        assert len(found) == len(EXAMPLE_RECORDS)
        assert found[0] == C("primary.example.test", 16880, 5, 100)
        assert {c.host for c in found[1:4]} == {f"kms{i}.example.test" for i in (1, 2, 3)}
        assert found[4] == C("backup.example.test", 1688, 20, 0)
        # Deterministic for a given random state, whatever order the server answered in.
        assert found == ordered_with(seed, canonical)


async def test_discover_trailing_dot_domain(knot: KnotServer) -> None:
    found = await discover_kms_hosts("example.test.", resolver=knot.resolver())
    assert set(found) == EXAMPLE_RECORDS
    assert all(not c.host.endswith(".") for c in found)


async def test_discover_ignoring_priority(knot: KnotServer) -> None:
    orders = []
    for seed in range(10):
        with seeded(seed):
            found = await discover_kms_hosts(
                "example.test", resolver=knot.resolver(), honour_priority=False
            )
        assert set(found) == EXAMPLE_RECORDS
        orders.append([c.priority for c in found])
    assert any(p != sorted(p) for p in orders)


async def test_unknown_name_is_nxdomain(knot: KnotServer) -> None:
    with pytest.raises(DiscoveryError) as info:
        await discover_kms_hosts("nope.example.test", resolver=knot.resolver())
    message = str(info.value)
    assert "_vlmcs._tcp.nope.example.test." in message
    assert "NXDOMAIN" in message
    assert info.value.attempts == (("_vlmcs._tcp.nope.example.test.", info.value.attempts[0][1]),)


async def test_unserved_domain_is_refused(knot: KnotServer) -> None:
    with pytest.raises(DiscoveryError) as info:
        await discover_kms_hosts("missing.test", resolver=knot.resolver())
    message = str(info.value)
    assert "_vlmcs._tcp.missing.test." in message
    assert "REFUSED" in message


async def test_name_without_srv_records_is_no_answer(knot: KnotServer) -> None:
    with pytest.raises(DiscoveryError) as info:
        await discover_kms_hosts("txtonly.test", resolver=knot.resolver())
    assert "_vlmcs._tcp.txtonly.test." in str(info.value)
    assert "no answer" in str(info.value)


async def test_dot_target_means_no_service(knot: KnotServer) -> None:
    with pytest.raises(DiscoveryError) as info:
        await discover_kms_hosts("nosvc.test", resolver=knot.resolver())
    assert "_vlmcs._tcp.nosvc.test." in str(info.value)
    assert "not available" in str(info.value)


async def test_search_list_falls_back_to_next_domain(knot: KnotServer) -> None:
    resolver = knot.resolver(search=["missing.test", "example.test"])
    found = await discover_kms_hosts(resolver=resolver)
    assert set(found) == EXAMPLE_RECORDS
    assert found[0].host == "primary.example.test"


async def test_search_list_skips_declined_domain(knot: KnotServer) -> None:
    resolver = knot.resolver(search=["nosvc.test", "example.test", "dyn.test"])
    found = await discover_kms_hosts(resolver=resolver)
    assert set(found) == EXAMPLE_RECORDS


async def test_search_list_first_domain_with_records_wins(knot: KnotServer) -> None:
    resolver = knot.resolver(search=["example.test", "missing.test"])
    found = await discover_kms_hosts(resolver=resolver)
    assert set(found) == EXAMPLE_RECORDS


async def test_search_list_all_failing_names_every_domain(knot: KnotServer) -> None:
    resolver = knot.resolver(search=["missing.test", "nosvc.test", "nope.example.test"])
    with pytest.raises(DiscoveryError) as info:
        await discover_kms_hosts(resolver=resolver)
    message = str(info.value)
    for name in ("missing.test", "nosvc.test", "nope.example.test"):
        assert f"_vlmcs._tcp.{name}." in message
    assert [name for name, _ in info.value.attempts] == [
        "_vlmcs._tcp.missing.test.",
        "_vlmcs._tcp.nosvc.test.",
        "_vlmcs._tcp.nope.example.test.",
    ]


async def test_resolver_domain_used_without_search_list(knot: KnotServer) -> None:
    resolver = knot.resolver()
    resolver.domain = dns.name.from_text("example.test")
    found = await discover_kms_hosts(resolver=resolver)
    assert set(found) == EXAMPLE_RECORDS


async def test_no_search_domain_configured(knot: KnotServer) -> None:
    with pytest.raises(DiscoveryError, match="no DNS search domain"):
        await discover_kms_hosts(resolver=knot.resolver())


async def test_invalid_domain_argument(knot: KnotServer) -> None:
    with pytest.raises(DiscoveryError, match=r"a\.\.b"):
        await discover_kms_hosts("a..b", resolver=knot.resolver())


async def test_timeout_is_reported() -> None:
    # A loopback UDP socket that never answers: the lookup must time out.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = silent.getsockname()[1]
        resolver.timeout = 0.3
        resolver.lifetime = 0.3
        with pytest.raises(DiscoveryError) as info:
            await discover_kms_hosts("example.test", resolver=resolver)
    assert "_vlmcs._tcp.example.test." in str(info.value)
    assert "timeout" in str(info.value)


async def test_dynamic_update_with_tsig_then_discover(knot: KnotServer) -> None:
    # Unsigned updates are refused: the ACL really requires the key.
    unsigned = dns.update.UpdateMessage("dyn.test.")
    unsigned.add("_vlmcs._tcp", 300, "SRV", "0 0 1688 rogue.dyn.test.")
    response = await dns.asyncquery.tcp(unsigned, knot.address, port=knot.port, timeout=3)
    # Knot 3.2 answers NOTAUTH when no ACL matches; other servers say REFUSED.
    assert response.rcode() in {dns.rcode.NOTAUTH, dns.rcode.REFUSED}

    # A key with the right name and a wrong secret is rejected too.
    wrong = TsigKey.generate(name=knot.tsig.name, algorithm=knot.tsig.algorithm)
    forged = dns.update.UpdateMessage("dyn.test.")
    forged.use_tsig(wrong.dnspython_key())
    forged.add("_vlmcs._tcp", 300, "SRV", "0 0 1688 rogue.dyn.test.")
    with pytest.raises(dns.tsig.PeerError):
        await dns.asyncquery.tcp(forged, knot.address, port=knot.port, timeout=3)

    update = dns.update.UpdateMessage("dyn.test.")
    update.use_tsig(knot.tsig.dnspython_key())
    update.add("_vlmcs._tcp", 300, "SRV", "0 0 1688 kms.dyn.test.")
    update.add("_vlmcs._tcp", 300, "SRV", "5 10 1700 spare.dyn.test.")
    update.add("kms", 300, "A", "127.0.0.21")
    update.add("spare", 300, "A", "127.0.0.22")
    response = await dns.asyncquery.tcp(update, knot.address, port=knot.port, timeout=3)
    assert response.rcode() == dns.rcode.NOERROR

    found = await discover_kms_hosts("dyn.test", resolver=knot.resolver())
    assert found == [C("kms.dyn.test", 1688, 0, 0), C("spare.dyn.test", 1700, 5, 10)]


# ---------------------------------------------------------------------------------
# The fixture's own contract
# ---------------------------------------------------------------------------------


def test_missing_knotd_fails_unless_skipping_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(dns_server, "find_knotd", lambda: None)
    monkeypatch.delenv("KMSGATE_ALLOW_SKIP", raising=False)
    with pytest.raises(pytest.fail.Exception, match="knotd"):
        KnotServer(tmp_path, {})
    monkeypatch.setenv("KMSGATE_ALLOW_SKIP", "1")
    with pytest.raises(pytest.skip.Exception, match="knotd"):
        KnotServer(tmp_path, {})


def test_fixture_exposes_tsig_key(knot: KnotServer) -> None:
    key = knot.tsig
    assert key.name.endswith(".")
    assert key.algorithm == "hmac-sha256"
    assert len(key.dnspython_key().secret) == 32
    assert f"secret: {key.secret}" in (knot.workdir / "knot.conf").read_text()
