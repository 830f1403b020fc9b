"""The host's identity for a run: HWID and the ePID answered for each product group."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date

from kmsgate.catalog import Catalog, Csvlk, HostBuild
from kmsgate.protocol.engine import EpidProvider
from kmsgate.protocol.epid import VALID_LCIDS, parse_hwid, random_epid, random_hwid
from kmsgate.protocol.messages import KmsRequest


def choose_host_build(catalog: Catalog, ndr64: bool, rng: random.Random) -> HostBuild:
    """A server build new enough for every CSVLK, preferring one whose NDR64 support matches."""
    newest_csvlk = max(
        (c.release_date for c in catalog.csvlks if not (c.is_lab or c.is_preview)), default=None
    )
    servers = [b for b in catalog.host_builds if b.use_for_epid and b.may_be_server]
    recent = [b for b in servers if newest_csvlk is None or b.release_date >= newest_csvlk]
    candidates = [b for b in recent if b.uses_ndr64 == ndr64] or recent or servers
    return rng.choice(sorted(candidates, key=lambda b: b.build))


@dataclass
class HostIdentity:
    """Chooses ePIDs: fixed, one per CSVLK for the whole run, or fresh for every request."""

    catalog: Catalog
    host_build: HostBuild
    lcid: int
    hwid: bytes
    rng: random.Random
    today: date
    fixed_epid: str | None = None
    per_request: bool = False
    _by_csvlk: dict[tuple[int, int, int], str] = field(default_factory=dict)

    def epid_for_csvlk(self, csvlk: Csvlk) -> str:
        key = (csvlk.group_id, csvlk.min_key_id, csvlk.max_key_id)
        epid = self._by_csvlk.get(key)
        if epid is None or self.per_request:
            epid = str(random_epid(csvlk, self.host_build, self.lcid, self.rng, self.today))
            self._by_csvlk[key] = epid
        return epid

    def epid_for(self, request: KmsRequest) -> str:
        """ePID for the request's KMS id (the provider handed to the engine)."""
        if self.fixed_epid is not None:
            return self.fixed_epid
        return self.epid_for_csvlk(self.catalog.csvlk_for_kms_id(request.kms_counted_id))

    @property
    def provider(self) -> EpidProvider:
        return self.epid_for


def build_identity(
    catalog: Catalog,
    *,
    epid: str,
    hwid: str,
    lcid: int | None,
    ndr64: bool,
    rng: random.Random,
    today: date,
) -> HostIdentity:
    """Turn the `--epid/--hwid/--lcid` settings into the identity of this run."""
    build = choose_host_build(catalog, ndr64, rng)
    return HostIdentity(
        catalog=catalog,
        host_build=build,
        lcid=lcid if lcid is not None else rng.choice(VALID_LCIDS),
        hwid=random_hwid(rng) if hwid == "random" else parse_hwid(hwid),
        rng=rng,
        today=today,
        fixed_epid=None if epid in ("random", "per-request") else epid,
        per_request=epid == "per-request",
    )
