"""Registry editions: the real national registry's 2021, 2022 and 2023 editions (../shared/data) loaded in turn with
coverage present, the 2023 change list shown (--dry-run), refused without --yes when nobody can be asked, then
applied; and a hand-made edition removing a reached village and a township.

The expected change list is computed here from the two editions' CSV files with the csv module and the
classification rule written out again (tests/support/services.py), never with lastmile.editions.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import random
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from coverage_service import fold
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.writer import ReadModelWriter
from lastmile import names
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile_dev import devstack
from tests.support import REPO
from tests.support.ingest_world import auth, running_ingest, scan_event
from tests.support.regulator_world import app_for, serving
from tests.support.reports_world import (
    GUANSHAN,
    LIANGJIA,
    PINGDING,
    SUNJIA,
    XIUSHUI,
    YUXIAN,
    County,
    event,
    village,
    write_registry,
)
from tests.support.services import is_administrative_village

pytestmark = pytest.mark.integration

EDITIONS = REPO.parent / "shared" / "data"
STEMS = ("provinces", "cities", "areas", "streets", "villages")
NOW = datetime.now(UTC).replace(microsecond=0)


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


async def recount_differs(
    redis: aioredis.Redis, prefix: str, edition: dict[str, tuple[str, bool]], reached: set[str]
) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """(region, as shown, as counted) for every province, city and county of ``edition`` whose villages_total or
    villages_reached in Redis differ from a count of the edition's administrative villages and ``reached``."""
    villages = [c for c, (_, admin) in edition.items() if admin]
    regions = sorted(c for c in edition if len(c) in (2, 4, 6))
    counted = {r: [0, 0] for r in regions}
    for v in villages:
        for r in (v[:2], v[:4], v[:6]):
            if r in counted:
                counted[r][0] += 1
                counted[r][1] += v in reached
    async with redis.pipeline(transaction=False) as pipe:
        for r in regions:
            pipe.hmget(names.key(prefix, names.REGION, r), [names.field.VILLAGES_TOTAL, names.field.VILLAGES_REACHED])
        shown = await pipe.execute()
    out = []
    for r, (total, got) in zip(regions, shown, strict=True):
        seen = (int(total or 0), int(got or 0))
        if seen != tuple(counted[r]):
            out.append((r, seen, (counted[r][0], counted[r][1])))
    return out


async def test_three_editions_in_turn_keep_every_figure_exact_and_show_their_changes(
    redis: aioredis.Redis, settings: Settings
) -> None:
    if not (EDITIONS / "cn-divisions-2021").is_dir():
        pytest.skip(f"the registry editions are not at {EDITIONS} (../shared beside the clone)")
    e2021, old, new = units("2021"), units("2022"), units("2023")
    p = settings.redis_key_prefix
    await load_registry(
        redis, p, await asyncio.to_thread(read_registry, EDITIONS / "cn-divisions-2021"), edition="2021"
    )
    # Coverage present before the changes: villages of 2021 at random, and every one a later edition removes or
    # moves across the village rule.
    admin = sorted(c for c, (_, a) in e2021.items() if a)
    touched = [c for c in admin if c not in new or c not in old or not old[c][1] or not new[c][1]]
    reached = set(random.Random(13).sample(admin, 400)) | set(touched)
    writer, ordered = ReadModelWriter(redis, p, 3600), sorted(reached)
    for offset, start in enumerate(range(0, len(ordered), 500)):
        batch = [event(v, NOW) for v in ordered[start : start + 500]]
        await writer.apply([fold.Record("t", 0, offset, batch)])
    assert await recount_differs(redis, p, e2021, reached) == []

    env = {**os.environ, "LASTMILE_REDIS_URL": settings.redis_url, "LASTMILE_REDIS_KEY_PREFIX": p}

    def run(edition: str, *extra: str) -> subprocess.CompletedProcess[str]:
        folder = str(EDITIONS / f"cn-divisions-{edition}")
        return subprocess.run(
            [*devstack.lastmile_command("registry", "load"), folder, "--edition", edition, "--no-progress", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )

    to_2022 = await asyncio.to_thread(run, "2022", "--yes")
    assert to_2022.returncode == 0, to_2022.stderr
    assert await recount_differs(redis, p, old, reached) == []

    kept = old.keys() & new.keys()
    expected = {
        "added": len(new.keys() - old.keys()),
        "removed": len(old.keys() - new.keys()),
        "renamed": sum(1 for c in kept if old[c][0] != new[c][0]),
        "reclassified": sum(1 for c in kept if len(c) == 12 and old[c][1] != new[c][1]),
    }
    counties_added = sorted(c for c in new.keys() - old.keys() if len(c) == 6)
    counties_removed = sorted(c for c in old.keys() - new.keys() if len(c) == 6)
    shown = await asyncio.to_thread(run, "2023", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith("registry changes, 2022 → 2023:"), out
    assert {what: printed(out, what) for what in expected} == expected
    assert f"counties added {len(counties_added)}: {' '.join(counties_added)}" in out
    assert f"counties removed {len(counties_removed)}: {' '.join(counties_removed)}" in out
    assert "dry run: nothing written" in out
    assert await redis.hget(names.key(p, names.REG_META), names.meta.EDITION) == "2022"

    refused = await asyncio.to_thread(run, "2023")  # nobody to ask, no --yes
    assert refused.returncode == 2 and "pass --yes to apply" in refused.stderr
    assert await redis.hget(names.key(p, names.REG_META), names.meta.EDITION) == "2022"
    renamed = next(c for c in sorted(kept) if len(c) == 12 and old[c][0] != new[c][0])
    assert await redis.hget(names.key(p, names.REG_UNIT, renamed), names.unit.NAME) == old[renamed][0]

    applied = await asyncio.to_thread(run, "2023", "--yes")
    assert applied.returncode == 0, applied.stderr
    assert await redis.hget(names.key(p, names.REG_META), names.meta.EDITION) == "2023"
    assert await redis.hget(names.key(p, names.REG_UNIT, renamed), names.unit.NAME) == new[renamed][0]
    assert await recount_differs(redis, p, new, reached) == []
    again = await asyncio.to_thread(run, "2023", "--dry-run")
    assert "dry run: no change from the loaded edition" in again.stdout
    async with serving(app_for(settings)) as client:  # every coverage document names the edition
        for path in ("/v1/coverage", "/v1/coverage/14", f"/v1/coverage/{renamed[:6]}"):
            assert (await client.get(path)).json()["definition"]["registry_edition"] == "2023", path
        for county in counties_removed:
            assert (await client.get(f"/v1/coverage/{county}")).status_code == 404, county


def edition_b(first: Path, second: Path, village_gone: str, renames: dict[str, str]) -> set[str]:
    """Edition A's folder less ``village_gone`` and township LIANGJIA, with ``renames``; the codes removed."""
    second.mkdir()
    gone: set[str] = set()
    for path in first.iterdir():
        with open(path, encoding="utf-8", newline="") as f:
            header, *rows = list(csv.reader(f))
        kept = [r for r in rows if r[0] != village_gone and not r[0].startswith(LIANGJIA)]
        gone |= {r[0] for r in rows} - {r[0] for r in kept}
        for r in kept:
            r[1] = renames.get(r[0], r[1])
        with open(second / path.name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *kept])
    return gone


def administrative_villages(folder: Path) -> list[dict[str, str]]:
    with open(folder / "villages.csv", encoding="utf-8", newline="") as f:
        return [r for r in csv.DictReader(f) if is_administrative_village(r["name"])]


async def test_applying_an_edition_takes_removed_units_out_of_every_figure(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """reports_world's county as edition A, with coverage; edition B removes a reached village and a whole township
    with a reached village, renames one and turns one into a community. Every figure is recounted from B's CSVs."""
    p = settings.redis_key_prefix
    first = write_registry(tmp_path / "A")
    await load_registry(redis, p, read_registry(first), edition="A")
    county = County(redis, settings)
    removed_village, renamed, to_community = village(XIUSHUI, 2), village(SUNJIA, 1), village(XIUSHUI, 3)
    reached = [village(XIUSHUI, 1), removed_village, to_community, village(LIANGJIA, 1), renamed, village(GUANSHAN, 1)]
    await county.apply(*(event(v, NOW, station="S" if v == renamed else None) for v in reached))

    gone = edition_b(first, tmp_path / "B", removed_village, {renamed: "孙家新村委会", to_community: "秀水三社区"})
    second = tmp_path / "B"
    env = {**os.environ, "LASTMILE_REDIS_URL": settings.redis_url, "LASTMILE_REDIS_KEY_PREFIX": p}
    command = [*devstack.lastmile_command("registry", "load"), str(second), "--edition", "B", "--no-progress", "--yes"]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"removed       {len(gone):>7}  ({sum(1 for c in gone if len(c) == 12)} village-level)" in done.stdout

    # The recount: B's administrative villages per region, reached ones among those the events reached.
    rows = administrative_villages(second)
    regions = {"CN", "14", "1403", YUXIAN, PINGDING} | {r["streetCode"] for r in rows}
    expected = {
        code: (
            sum(1 for r in rows if code == "CN" or r["code"].startswith(code)),
            sum(1 for r in rows if (code == "CN" or r["code"].startswith(code)) and r["code"] in reached),
            sum(1 for r in rows if (code == "CN" or r["code"].startswith(code)) and r["code"] == renamed),
        )
        for code in regions
    }
    async with serving(app_for(settings)) as client:
        shown = {}
        for code in regions:
            body = (await client.get(f"/v1/coverage/{code}")).json()
            shown[code] = (body["villages_total"], body["villages_reached"], body["villages_with_station"])
        assert shown == expected
        assert (await client.get(f"/v1/coverage/{LIANGJIA}")).status_code == 404
        assert (await client.get(f"/v1/villages/{removed_village}")).status_code == 404
        yuxian = (await client.get(f"/v1/coverage/{YUXIAN}")).json()
        assert LIANGJIA not in [c["code"] for c in yuxian["children"]]
        assert yuxian["definition"]["registry_edition"] == "B"
        # Every coverage document names the edition its figures were computed on.
        for path in (
            f"/v1/coverage/{YUXIAN}/targets",
            f"/v1/laggards/{YUXIAN}",
            f"/v1/reports/{YUXIAN}/subsidies?year=2026",
        ):
            body = (await client.get(path)).json()
            assert body["definition"]["registry_edition"] == "B", (path, body)
        assert (await client.get(f"/v1/coverage/{YUXIAN}/unreached")).json()["registry_edition"] == "B"
        assert (await client.get(f"/v1/coverage/{LIANGJIA}/unreached")).status_code == 404
        names_shown = {c["code"]: c["name"] for c in (await client.get(f"/v1/coverage/{SUNJIA}")).json()["children"]}
        assert names_shown[renamed] == "孙家新村委会"

    ingest_settings = settings.replace(carrier_tokens=json.dumps({"sf-token-0123456789abcdef": "sf"}))
    async with running_ingest(ingest_settings, redis) as ingest:
        r = await ingest.http.post(
            "/v1/scans",
            json={"events": [scan_event(0, "rm", location_code=removed_village)]},
            headers=auth("sf-token-0123456789abcdef"),
        )
    assert r.status_code == 422, r.text
    assert f"{removed_village} was removed from the division registry by its current edition (B)" in r.text
