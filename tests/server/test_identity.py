"""The host's identity: one Windows host key, one per Office version, kept across restarts."""

from __future__ import annotations

import json
import logging
import random
import uuid
from datetime import date
from pathlib import Path

import pytest

from kmsgate.catalog import Catalog, default_catalog
from kmsgate.config.settings import ServeSettings
from kmsgate.protocol.epid import parse_epid
from kmsgate.protocol.errors import ActivationError
from kmsgate.protocol.hresult import HResult
from kmsgate.server.host import KmsHost
from kmsgate.server.identity import (
    HostIdentity,
    IdentityError,
    build_identity,
    read_identity_file,
)
from tests.support.kms import RawClient, make_request

U = uuid.UUID
CATALOG = default_catalog()
TODAY = date(2026, 12, 1)
SERVER_2025_CSVLK = U("84e331f6-4279-48c4-ab10-b75139181351")
WINDOWS_APP = U("55c92734-d682-4d71-983e-d6ec3f16059f")
OFFICE_APP = U("0ff1ce15-a989-479d-af46-f275c6370663")
OFFICE_2010_APP = U("59a52881-a989-479d-af46-f275c6370663")
KMS_SERVER_2025 = U("907f1f65-adcd-4a2e-95bc-4bf500bc6e58")
KMS_SERVER_2025_PLACEHOLDER = U("4b83307d-7788-50ff-8d1f-1861915bdb9d")
KMS_OFFICE_2024 = U("a8973cb5-bf03-0a4c-9cef-703099645ab3")
KMS_OFFICE_2024_PLACEHOLDER = U("1b4db7eb-4057-5ddf-91e0-36dec72071f5")
KMS_CHINA_GOV = U("7ba0bf23-d0f5-4072-91d9-d55af5a481b6")
KMS_WIN10 = U("58e2134f-8e11-4d17-9cb2-91069c151148")
KMS_SERVER_2019 = U("8449b1fb-f0ea-497a-99ab-66ca96e9a0f5")


def identity(tmp_path: Path | None = None, seed: int = 1, **options: object) -> HostIdentity:
    args: dict[str, object] = {
        "epid": ["random"],
        "hwid": "random",
        "lcid": 1033,
        "host_build": None,
        "ndr64": True,
    }
    args.update(options)
    return build_identity(
        CATALOG,
        rng=random.Random(seed),
        today=TODAY,
        path=None if tmp_path is None else tmp_path / "identity.json",
        **args,  # type: ignore[arg-type]
    )


def request_for(kms_id: uuid.UUID, *, cmid: uuid.UUID | None = None):  # type: ignore[no-untyped-def]
    kms = CATALOG.kms_id(kms_id)
    app = kms.application_id if kms is not None else WINDOWS_APP
    skus = CATALOG.skus_for_kms_id(CATALOG.genuine_kms_id(kms_id))
    request = make_request(6)
    return request.__class__(
        **{
            **{f: getattr(request, f) for f in request.__dataclass_fields__},
            "application_id": app,
            "kms_counted_id": kms_id,
            "sku_id": skus[0].id if skus else uuid.uuid4(),
            "client_machine_id": cmid or uuid.uuid4(),
        }
    )


def covered_genuine_ids(catalog: Catalog, ident: HostIdentity) -> list[uuid.UUID]:
    return [k.id for k in catalog.kms_ids if k.in_microsoft_list and ident.covers(k.id)]


# --- one identity like a genuine host --------------------------------------------------------


def test_default_host_is_a_server_2025_host_with_one_windows_key() -> None:
    ident = identity()
    assert (ident.host_build.build, ident.host_build.platform_id, ident.lcid) == (26100, 3612, 1033)
    assert [k.name for k in ident.keys] == [
        "windows", "office2010", "office2013", "office2016", "office2019", "office2021",
        "office2024",
    ]  # fmt: skip
    windows = ident.windows
    assert windows.csvlk.id == SERVER_2025_CSVLK
    epid = parse_epid(windows.epid)
    assert epid.group_id == 4919
    assert windows.csvlk.has_key_id(epid.key_id)
    assert (epid.platform_id, epid.build, epid.lcid) == (3612, 26100, 1033)
    assert date(2024, 11, 1) <= epid.activation_date <= TODAY


def test_every_windows_product_shares_one_epid_and_offices_get_their_own() -> None:
    ident = identity()
    windows_ids = list(ident.windows.csvlk.activates_kms_ids)
    assert len(windows_ids) == 23
    assert {ident.epid_for(request_for(k)) for k in windows_ids} == {ident.windows.epid}
    office_epids = {held.name: held.epid for held in ident.keys[1:]}
    assert len(set(office_epids.values())) == 6
    assert ident.windows.epid not in office_epids.values()
    assert ident.epid_for(request_for(KMS_OFFICE_2024)) == office_epids["office2024"]
    office_2024 = parse_epid(office_epids["office2024"])
    assert office_2024.group_id == 206 and 591_000_000 <= office_2024.key_id <= 610_999_999
    office_2010 = parse_epid(office_epids["office2010"])
    assert office_2010.group_id == 96


@pytest.mark.parametrize(
    ("placeholder", "genuine"),
    [
        (KMS_SERVER_2025_PLACEHOLDER, KMS_SERVER_2025),
        (KMS_OFFICE_2024_PLACEHOLDER, KMS_OFFICE_2024),
    ],
)
def test_superseded_placeholders_answer_like_their_genuine_ids(
    placeholder: uuid.UUID, genuine: uuid.UUID
) -> None:
    ident = identity()
    assert ident.covers(placeholder)
    assert ident.epid_for(request_for(placeholder)) == ident.epid_for(request_for(genuine))


def test_ids_no_key_covers_get_the_windows_epid() -> None:
    ident = identity()
    assert not ident.covers(KMS_CHINA_GOV)
    assert not ident.covers(U(int=99))
    assert ident.epid_for(request_for(KMS_CHINA_GOV)) == ident.windows.epid
    assert ident.epid_for(request_for(U(int=99))) == ident.windows.epid


@pytest.mark.parametrize(
    ("build", "group", "platform"),
    [(20348, 4573, 3612), (17763, 206, 3612), (9600, 206, 6401), (7601, 168, 55041)],
)
def test_host_build_chooses_platform_and_windows_key(build: int, group: int, platform: int) -> None:
    for seed in range(30):
        ident = identity(seed=seed, host_build=build)
        epid = parse_epid(ident.windows.epid)
        assert (epid.build, epid.platform_id, epid.group_id) == (build, platform, group)
        assert ident.windows.csvlk.has_key_id(epid.key_id)
        for held in ident.keys:
            assert held.csvlk.has_key_id(parse_epid(held.epid).key_id)


def test_server_2022_host_never_draws_from_the_key_id_hole() -> None:
    epids = [identity(seed=s, host_build=20348).windows.epid for s in range(300)]
    assert not any(20_000 <= parse_epid(e).key_id <= 29_999 for e in epids)


def test_an_older_host_holds_only_the_office_keys_its_os_can_host() -> None:
    ident = identity(host_build=9200)
    assert [k.name for k in ident.keys] == [
        "windows", "office2010", "office2013", "office2016", "office2019",
    ]  # fmt: skip
    assert not ident.covers(KMS_OFFICE_2024)


def test_without_ndr64_the_host_claims_a_build_without_ndr64() -> None:
    ident = identity(ndr64=False)
    assert ident.host_build.build == 7601 and not ident.host_build.uses_ndr64
    assert parse_epid(ident.windows.epid).platform_id == 55041
    # An explicit build wins even without NDR64.
    assert identity(ndr64=False, host_build=26100).host_build.build == 26100


@pytest.mark.parametrize("build", [2600, 1234, 10])
def test_a_build_that_cannot_host_is_refused(build: int) -> None:
    with pytest.raises(IdentityError, match=f"host build {build} cannot run a KMS host"):
        identity(host_build=build)


# --- configured ePIDs --------------------------------------------------------------------------


def test_per_key_epid_overrides() -> None:
    windows = "03612-04919-000-012345-03-1033-26100.0000-3152024"
    office = "03612-00206-600-000001-03-1049-26100.0000-0012025"
    ident = identity(epid=[f"windows={windows}", f"office2024={office}"])
    assert ident.epid_for(request_for(KMS_SERVER_2019)) == windows
    assert ident.epid_for(request_for(KMS_OFFICE_2024)) == office
    by_name = {k.name: k for k in ident.keys}
    assert by_name["office2019"].source == "generated"
    assert by_name["windows"].source == "configured"


def test_a_bare_epid_answers_every_key() -> None:
    fixed = "03612-00206-556-123727-03-1033-17763.0000-2972018"
    ident = identity(epid=[fixed])
    assert {ident.epid_for(request_for(k)) for k in (KMS_WIN10, KMS_OFFICE_2024, U(int=5))} == {
        fixed
    }


def test_override_not_fitting_the_key_is_answered_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    office_2019_epid = "03612-00206-684-137669-03-1033-17763.0000-2972018"
    with caplog.at_level(logging.WARNING, logger="kmsgate.server"):
        ident = identity(epid=[f"windows={office_2019_epid}"])
    assert ident.windows.epid == office_2019_epid
    assert "does not fit the Windows Server 2025 host key" in caplog.text


@pytest.mark.parametrize(
    "bad", ["office=03612-00206-684-137669-03-1033-17763.0000-2972018", "windows=nonsense", "x"]
)
def test_bad_epid_option_values_are_refused(bad: str) -> None:
    with pytest.raises(IdentityError):
        identity(epid=[bad])
    with pytest.raises(ValueError):
        ServeSettings(epid=[bad])


def test_per_request_mode_draws_a_new_epid_from_the_right_key_every_time() -> None:
    ident = identity(epid=["per-request"])
    epids = {ident.epid_for(request_for(KMS_SERVER_2019)) for _ in range(20)}
    assert len(epids) > 15
    assert all(parse_epid(e).group_id == 4919 for e in epids)


# --- persistence -------------------------------------------------------------------------------


def test_identity_survives_a_restart(tmp_path: Path) -> None:
    first = identity(tmp_path, seed=1)
    again = identity(tmp_path, seed=2)  # another run draws other numbers
    assert [(k.name, k.epid) for k in again.keys] == [(k.name, k.epid) for k in first.keys]
    assert again.hwid == first.hwid
    assert all(k.source == "saved" for k in again.keys)
    saved = read_identity_file(tmp_path / "identity.json")
    assert saved is not None and saved["hwid"] == first.hwid.hex().upper()
    assert saved["epids"][str(SERVER_2025_CSVLK)] == first.windows.epid


def test_changed_settings_regenerate_only_what_no_longer_fits(tmp_path: Path) -> None:
    first = identity(tmp_path, seed=1)
    russian = identity(tmp_path, seed=2, lcid=1049)
    assert all(parse_epid(k.epid).lcid == 1049 for k in russian.keys)
    assert russian.hwid == first.hwid
    older = identity(tmp_path, seed=3, lcid=1049, host_build=20348)
    assert parse_epid(older.windows.epid).group_id == 4573
    # Office keys held by both builds keep nothing: the build is part of every ePID.
    assert all(parse_epid(k.epid).build == 20348 for k in older.keys)
    back = identity(tmp_path, seed=4, lcid=1049, host_build=20348)
    assert [k.epid for k in back.keys] == [k.epid for k in older.keys]


def test_a_configured_hwid_does_not_replace_the_saved_one(tmp_path: Path) -> None:
    first = identity(tmp_path, seed=1)
    configured = identity(tmp_path, seed=2, hwid="3A1C049600B60076")
    assert configured.hwid == bytes.fromhex("3A1C049600B60076")
    assert identity(tmp_path, seed=3).hwid == first.hwid


@pytest.mark.parametrize("content", ["not json", '{"format": "other"}', "[]"])
def test_a_broken_identity_file_is_replaced_with_a_warning(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "identity.json").write_text(content)
    with caplog.at_level(logging.WARNING, logger="kmsgate.server"):
        ident = identity(tmp_path)
    assert "a new identity is generated" in caplog.text
    assert identity(tmp_path, seed=9).windows.epid == ident.windows.epid


def test_an_unwritable_identity_file_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="kmsgate.server"):
        build_identity(
            CATALOG, epid=["random"], hwid="random", lcid=1033, host_build=None, ndr64=True,
            rng=random.Random(1), today=TODAY, path=blocker / "identity.json",
        )  # fmt: skip
    assert "it will change on restart" in caplog.text


def test_two_nodes_sharing_an_identity_file_answer_alike(tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "identity.json"
    one = build_identity(CATALOG, epid=["random"], hwid="random", lcid=1033, host_build=None,
                         ndr64=True, rng=random.Random(1), today=TODAY, path=shared)  # fmt: skip
    two = build_identity(CATALOG, epid=["random"], hwid="random", lcid=1033, host_build=None,
                         ndr64=True, rng=random.Random(2), today=TODAY, path=shared)  # fmt: skip
    assert [k.epid for k in one.keys] == [k.epid for k in two.keys] and one.hwid == two.hwid
    doc = json.loads(shared.read_text())
    assert doc["format"] == "kmsgate-identity/1" and doc["host_build"] == 26100


# --- through a real host on loopback ----------------------------------------------------------


async def test_every_covered_genuine_id_activates_under_deny_unknown_products(
    tmp_path: Path,
) -> None:
    settings = ServeSettings(
        listen=["127.0.0.1:0"], deny_unknown_products=True, data_dir=tmp_path, max_clock_skew=0
    )
    async with KmsHost(settings) as host:
        ident = host.identity
        genuine = covered_genuine_ids(CATALOG, ident)
        assert len(genuine) == 24
        client = await RawClient.connect(host.port)
        try:
            await client.bind()
            for kms_id in [*genuine, KMS_SERVER_2025_PLACEHOLDER, KMS_OFFICE_2024_PLACEHOLDER]:
                answer = await client.activate(6, request_for(kms_id))
                held = ident.key_for(kms_id)
                assert held is not None
                epid = parse_epid(answer.response.epid)
                assert answer.response.epid == held.epid
                assert epid.group_id == held.csvlk.group_id
                assert held.csvlk.has_key_id(epid.key_id)
                assert (epid.platform_id, epid.build) == (3612, 26100)
        finally:
            await client.close()


async def test_uncovered_ids_are_refused_like_a_genuine_host_only_when_asked(
    tmp_path: Path,
) -> None:
    base = {"listen": ["127.0.0.1:0"], "data_dir": tmp_path, "max_clock_skew": 0}
    for deny in (True, False):
        async with KmsHost(ServeSettings(**base, deny_unknown_products=deny)) as host:
            client = await RawClient.connect(host.port)
            try:
                await client.bind()
                for kms_id in (KMS_CHINA_GOV, U("cbdcb1ba-e093-4c81-a463-10775291fdf9"), U(int=7)):
                    if deny:
                        refused = f"0x{HResult.PRODUCT_NOT_ALLOWED:08X}"
                        with pytest.raises(ActivationError, match=refused):
                            await client.activate(6, request_for(kms_id))
                    else:
                        answer = await client.activate(6, request_for(kms_id))
                        assert answer.response.epid == host.identity.windows.epid
            finally:
                await client.close()
