"""Daily snapshots against a real redis-server: idempotent per day, read back as a series, kept in Redis.

The registry is reports_world's county (11 regions from the nation down to townships); every expected
figure is counted by hand from it and the events applied.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from coverage_service.readmodel import history
from coverage_service.readmodel.registry_store import load_registry
from lastmile.registry import read_registry
from lastmile.settings import Settings
from tests.support.regulator_world import app_for, serving
from tests.support.reports_world import REGIONS, SUNJIA, TOWNSHIPS, YUXIAN, County, event, village, write_registry

pytestmark = pytest.mark.integration

CST = timezone(timedelta(hours=8))
NOW = datetime.now(UTC)
TODAY = NOW.astimezone(CST).date()
YESTERDAY = TODAY - timedelta(days=1)
REACH = (NOW - timedelta(days=1)).replace(microsecond=0)
REACH_TEXT = REACH.strftime("%Y-%m-%dT%H:%M:%S.000Z")
LASTMILE = Path(sys.executable).with_name("lastmile")  # the console script of this environment


async def take(redis: aioredis.Redis, settings: Settings, day: date) -> history.Taken:
    return await history.take(
        redis,
        settings.redis_key_prefix,
        day,
        now_ms=int(datetime.now(UTC).timestamp() * 1000),
        lapse_days=settings.lapse_window_days,
    )


async def test_a_day_is_taken_once_and_days_make_a_series(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    county = County(redis, settings)
    await county.load(tmp_path / "reg")
    p = settings.redis_key_prefix
    await county.apply(event(village(SUNJIA, 1), REACH, station="S1"))

    first = await take(redis, settings, YESTERDAY)
    assert (first.regions, first.written, first.already) == (REGIONS, REGIONS, False)
    await county.apply(event(village(SUNJIA, 2), NOW - timedelta(days=40)))  # reached, but already lapsed
    again = await take(redis, settings, YESTERDAY)
    assert (again.regions, again.written, again.already) == (REGIONS, 0, True)
    assert await redis.hlen(f"{p}:history:{SUNJIA}") == 1
    second = await take(redis, settings, TODAY)
    assert second.written == REGIONS

    day1 = {
        "date": YESTERDAY.isoformat(),
        "villages_total": 2,
        "villages_reached": 1,
        "villages_active": 1,
        "villages_lapsed": 0,
        "villages_with_station": 1,
        "coverage_rate": 0.5,
        "as_of": REACH_TEXT,
        "registry_edition": None,  # loaded without --edition
        "restated": None,  # no correction since
    }
    day2 = {
        "date": TODAY.isoformat(),
        "villages_total": 2,
        "villages_reached": 2,
        "villages_active": 1,
        "villages_lapsed": 1,
        "villages_with_station": 1,
        "coverage_rate": 1.0,
        "as_of": REACH_TEXT,
        "registry_edition": None,  # loaded without --edition
        "restated": None,  # no correction since
    }
    async with serving(app_for(settings)) as client:
        r = await client.get(f"/v1/coverage/{SUNJIA}/history")  # the last 90 days by default
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["code"], body["name"], body["level"]) == (SUNJIA, "孙家庄镇", "township")
        assert (body["from"], body["to"]) == ((TODAY - timedelta(days=89)).isoformat(), TODAY.isoformat())
        assert body["series"] == [day1, day2]
        assert body["definition"]["scope"] == {"carrier": None, "cooperation_model": None, "min_population": None}

        r = await client.get(f"/v1/coverage/{SUNJIA}/history", params={"from": TODAY.isoformat()})
        assert r.json()["series"] == [day2]
        r = await client.get(f"/v1/coverage/{SUNJIA}/history", params={"to": YESTERDAY.isoformat()})
        assert r.json()["series"] == [day1]
        r = await client.get("/v1/coverage/CN/history", params={"from": (TODAY - timedelta(days=400)).isoformat()})
        national = r.json()
        assert national["name"] == "全国"
        assert [(e["villages_total"], e["villages_reached"], e["villages_lapsed"]) for e in national["series"]] == [
            (21, 1, 0),
            (21, 2, 1),
        ]

        r = await client.get(f"/v1/coverage/{SUNJIA}/history", params={"format": "csv"})
        assert r.status_code == 200 and r.text.startswith("\ufeff")
        lines = r.text[1:].splitlines()
        assert (
            lines[0] == "date,villages_total,villages_reached,villages_active,villages_lapsed,"
            "villages_with_station,coverage_rate,as_of,registry_edition,restated_villages_reached,"
            "restated_villages_active,restated_villages_lapsed,restated_villages_with_station,restated_coverage_rate,"
            "restated_corrections"
        )
        assert lines[2] == f"{TODAY.isoformat()},2,2,1,1,1,1.0,{REACH_TEXT},,,,,,,"

    # Another app with its own Redis client reads the same history.
    async with serving(app_for(settings)) as client:
        assert (await client.get(f"/v1/coverage/{SUNJIA}/history")).json()["series"] == [day1, day2]


async def test_one_day_with_the_children_for_a_map_as_of_that_day(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    county = County(redis, settings)
    await county.load(tmp_path / "reg")
    await county.apply(event(village(SUNJIA, 1), REACH, station="S1"))
    await take(redis, settings, YESTERDAY)
    await county.apply(event(village(SUNJIA, 2), REACH))  # after yesterday's snapshot: not in it
    async with serving(app_for(settings)) as client:
        r = await client.get(f"/v1/coverage/{YUXIAN}/history/{YESTERDAY}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["code"], body["name"], body["level"], body["date"]) == (
            YUXIAN,
            "盂县",
            "county",
            YESTERDAY.isoformat(),
        )
        assert (body["figures"]["villages_total"], body["figures"]["villages_reached"]) == (19, 1)
        townships = {c: t for c, t in TOWNSHIPS.items() if t[1] == YUXIAN}
        assert [c["code"] for c in body["children"]] == sorted(townships)
        shown = {
            c["code"]: (c["name"], c["level"], c["villages_total"], c["villages_reached"]) for c in body["children"]
        }
        assert shown == {
            c: (name, "township", total, 1 if c == SUNJIA else 0) for c, (name, _, total) in townships.items()
        }

        r = await client.get(f"/v1/coverage/{YUXIAN}/history/{YESTERDAY}", params={"format": "csv"})
        lines = r.text[1:].splitlines()
        assert lines[0].startswith("code,name,level,date,villages_total,villages_reached,")
        assert lines[1].startswith(f"{YUXIAN},盂县,county,{YESTERDAY},19,1,")
        assert len(lines) == 2 + len(townships)

        r = await client.get(f"/v1/coverage/{YUXIAN}/history/{TODAY}")  # no snapshot taken today
        assert (r.status_code, r.json()["figures"], r.json()["children"]) == (200, None, [])
        r = await client.get(f"/v1/coverage/{YUXIAN}/history/2024-02-30")
        assert (r.status_code, r.json()["detail"]) == (400, "day='2024-02-30' is not a date YYYY-MM-DD")
        assert (await client.get(f"/v1/coverage/140399/history/{YESTERDAY}")).status_code == 404

        r = await client.get(f"/v1/coverage/CN/history/{YESTERDAY}", params={"level": "county"})
        assert [(c["code"], c["level"], c["villages_total"], c["villages_reached"]) for c in r.json()["children"]] == [
            ("140321", "county", 2, 0),
            (YUXIAN, "county", 19, 1),
        ]
        r = await client.get(f"/v1/coverage/CN/history/{YESTERDAY}")
        assert [(c["code"], c["name"]) for c in r.json()["children"]] == [("14", "山西省")]
        r = await client.get(f"/v1/coverage/{YUXIAN}/history/{YESTERDAY}", params={"level": "city"})
        assert (r.status_code, r.json()["type"].rsplit("/", 1)[-1]) == (400, "invalid-level")


async def test_each_snapshot_keeps_the_edition_it_was_taken_on(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    folder = write_registry(tmp_path / "reg")
    p = settings.redis_key_prefix
    await load_registry(redis, p, read_registry(folder), edition="2022")
    await take(redis, settings, YESTERDAY)
    await load_registry(redis, p, read_registry(folder), edition="2023")
    await take(redis, settings, TODAY)
    async with serving(app_for(settings)) as client:
        series = (await client.get(f"/v1/coverage/{SUNJIA}/history")).json()["series"]
        assert [(e["date"], e["registry_edition"]) for e in series] == [
            (YESTERDAY.isoformat(), "2022"),
            (TODAY.isoformat(), "2023"),
        ]
        day = (await client.get(f"/v1/coverage/CN/history/{YESTERDAY}")).json()
        assert day["figures"]["registry_edition"] == "2022"


async def test_history_rejects_bad_dates_and_codes(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    await County(redis, settings).load(tmp_path / "reg")
    async with serving(app_for(settings)) as client:
        for params, needle in [
            ({"from": "2024-02-30"}, "from='2024-02-30' is not a date YYYY-MM-DD"),
            ({"to": "yesterday"}, "to='yesterday' is not a date"),
            ({"from": "2024-5-1"}, "is not a date"),
            ({"from": "2024-05-02", "to": "2024-05-01"}, "from=2024-05-02 is after to=2024-05-01"),
            ({"from": "1990-01-01", "to": "2024-05-01"}, "spans more than 3660 days"),
        ]:
            r = await client.get(f"/v1/coverage/{SUNJIA}/history", params=params)
            assert r.status_code == 400, params
            assert r.headers["content-type"] == "application/problem+json"
            assert needle in r.json()["detail"], (params, r.json())
        assert (await client.get("/v1/coverage/140322199/history")).status_code == 404
        assert (await client.get("/v1/coverage/1403221/history")).status_code == 400
        r = await client.get(f"/v1/coverage/{SUNJIA}/history", params={"from": "2024-05-01", "to": "2024-05-01"})
        assert (r.status_code, r.json()["series"]) == (200, [])


async def test_the_worker_takes_the_snapshot_from_the_configured_hour(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    await County(redis, settings).load(tmp_path / "reg")
    evening = datetime(2024, 5, 1, 22, 59, tzinfo=CST)
    assert await history.take_if_due(redis, settings, evening) is None  # SNAPSHOT_HOUR is 23 by default
    taken = await history.take_if_due(redis, settings, evening + timedelta(minutes=1))
    assert taken is not None and (taken.day, taken.regions) == (date(2024, 5, 1), REGIONS)
    assert await history.take_if_due(redis, settings, evening + timedelta(minutes=2)) is None  # taken already
    # 00:30 the next day (16:30 UTC) is before the hour again.
    assert await history.take_if_due(redis, settings, datetime(2024, 5, 1, 16, 30, tzinfo=UTC)) is None
    assert await redis.hkeys(f"{settings.redis_key_prefix}:history-days") == ["2024-05-01"]


async def test_the_snapshot_command(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    await County(redis, settings).load(tmp_path / "reg")
    env = {
        **os.environ,
        "LASTMILE_REDIS_URL": settings.redis_url,
        "LASTMILE_REDIS_KEY_PREFIX": settings.redis_key_prefix,
    }
    command = [str(LASTMILE), "snapshot", "--date", "2024-05-01"]

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, text=True, timeout=60)

    done = await run(*command)
    assert (done.returncode, done.stdout) == (0, f"snapshot 2024-05-01: {REGIONS} regions, {REGIONS} entries written\n")
    again = await run(*command)
    assert (again.returncode, again.stdout) == (
        0,
        f"snapshot 2024-05-01 was already taken ({REGIONS} regions); nothing changed\n",
    )
    assert await redis.hget(f"{settings.redis_key_prefix}:history:{SUNJIA}", "2024-05-01") == "[2,0,0,0,null,null]"
    late = await run(*command[:-1], (TODAY + timedelta(days=2)).isoformat())
    assert late.returncode == 2 and "is after today" in late.stderr
