"""Registry editions on the real national registry (../shared/data): the 2022 edition loaded, then the 2023 one
shown (--dry-run), refused without --yes when nobody can be asked, and applied with it.

The expected change list is computed here from the two editions' CSV files with the csv module and the
classification rule written out again (tests/support/services.py), never with lastmile.editions.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import os
import re
import subprocess

import pytest
import redis.asyncio as aioredis

from coverage_service.readmodel.registry_store import load_registry
from lastmile import names
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile_dev import devstack
from tests.support import REPO
from tests.support.regulator_world import app_for, serving
from tests.support.services import is_administrative_village

pytestmark = pytest.mark.integration

EDITIONS = REPO.parent / "shared" / "data"
STEMS = ("provinces", "cities", "areas", "streets", "villages")


def units(edition: str) -> dict[str, tuple[str, bool]]:
    """code -> (name, counts as an administrative village), every unit of an edition."""
    out: dict[str, tuple[str, bool]] = {}
    for stem in STEMS:
        with gzip.open(EDITIONS / f"cn-divisions-{edition}" / f"{stem}.csv.gz", "rt", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                village = stem == "villages" and is_administrative_village(row["name"])
                out[row["code"]] = (row["name"], village)
    return out


def printed(text: str, what: str) -> int:
    found = re.search(rf"^  {what}\s+([\d,]+)", text, re.MULTILINE)
    assert found, (what, text)
    return int(found.group(1).replace(",", ""))


async def test_the_2023_edition_is_listed_before_it_is_applied(redis: aioredis.Redis, settings: Settings) -> None:
    if not (EDITIONS / "cn-divisions-2022").is_dir():
        pytest.skip(f"the registry editions are not at {EDITIONS} (../shared beside the clone)")
    old, new = units("2022"), units("2023")
    kept = old.keys() & new.keys()
    expected = {
        "added": len(new.keys() - old.keys()),
        "removed": len(old.keys() - new.keys()),
        "renamed": sum(1 for c in kept if old[c][0] != new[c][0]),
        "reclassified": sum(1 for c in kept if len(c) == 12 and old[c][1] != new[c][1]),
    }
    counties_added = sorted(c for c in new.keys() - old.keys() if len(c) == 6)
    counties_removed = sorted(c for c in old.keys() - new.keys() if len(c) == 6)

    p = settings.redis_key_prefix
    await load_registry(
        redis, p, await asyncio.to_thread(read_registry, EDITIONS / "cn-divisions-2022"), edition="2022"
    )
    env = {**os.environ, "REDIS_URL": settings.redis_url, "REDIS_KEY_PREFIX": p}
    command = [*devstack.lastmile_command("registry", "load"), str(EDITIONS / "cn-divisions-2023"), "--edition", "2023"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "--no-progress", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )

    shown = await asyncio.to_thread(run, "--dry-run")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith("registry changes, 2022 → 2023:"), out
    assert {what: printed(out, what) for what in expected} == expected
    assert f"counties added {len(counties_added)}: {' '.join(counties_added)}" in out
    assert f"counties removed {len(counties_removed)}: {' '.join(counties_removed)}" in out
    assert "dry run: nothing written" in out
    assert await redis.hget(names.key(p, names.REG_META), names.meta.EDITION) == "2022"

    refused = await asyncio.to_thread(run)  # nobody to ask, no --yes
    assert refused.returncode == 2 and "pass --yes to apply" in refused.stderr
    assert await redis.hget(names.key(p, names.REG_META), names.meta.EDITION) == "2022"
    renamed = next(c for c in sorted(kept) if len(c) == 12 and old[c][0] != new[c][0])
    assert await redis.hget(names.key(p, names.REG_UNIT, renamed), names.unit.NAME) == old[renamed][0]

    applied = await asyncio.to_thread(run, "--yes")
    assert applied.returncode == 0, applied.stderr
    assert await redis.hget(names.key(p, names.REG_META), names.meta.EDITION) == "2023"
    assert await redis.hget(names.key(p, names.REG_UNIT, renamed), names.unit.NAME) == new[renamed][0]
    again = await asyncio.to_thread(run, "--dry-run")
    assert "dry run: no change from the loaded edition" in again.stdout
    async with serving(app_for(settings)) as client:  # every coverage document names the edition
        for path in ("/v1/coverage", "/v1/coverage/14", f"/v1/coverage/{renamed[:6]}"):
            assert (await client.get(path)).json()["definition"]["registry_edition"] == "2023", path
