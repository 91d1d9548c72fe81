"""Population tiers, stations and the lapse index, through the apply script and registry reloads.

The registry is a hand-made folder; every expected figure is written out by hand from it.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from coverage_service import fold
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.writer import ReadModelWriter
from lastmile import names, scan
from lastmile.registry import read_registry
from lastmile.settings import Settings
from tests.support import stored

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
A, B, C, D = "140322205201", "140322205202", "140322205203", "140322205204"


def write_registry(folder: Path, villages: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "provinces": (["code", "name"], [["14", "山西省"]]),
        "cities": (["code", "name", "provinceCode"], [["1403", "阳泉市", "14"]]),
        "areas": (["code", "name", "cityCode", "provinceCode"], [["140322", "盂县", "1403", "14"]]),
        "streets": (
            ["code", "name", "areaCode", "provinceCode", "cityCode"],
            [["140322205", "东梁乡", "140322", "14", "1403"]],
        ),
    }
    for stem, (header, rows) in tables.items():
        with open(folder / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
    header = ["code", "name", "streetCode", "provinceCode", "cityCode", "areaCode", "kind", "population"]
    with open(folder / "villages.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for v in villages:
            w.writerow([v["code"], v["name"], "140322205", "14", "1403", "140322", v.get("kind", ""), v.get("pop", "")])
    return folder


def event(i: int, carrier: str, code: str, days_ago: float, station: str | None = None) -> fold.Entry:
    raw = {
        "event_id": f"e{i}",
        "carrier": carrier,
        "waybill": f"W{i}",
        "event_type": "delivered",
        "location_code": code,
        "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
    }
    if station:
        raw["station_id"] = station
    parsed = scan.validate(raw, now=NOW)
    assert isinstance(parsed, scan.ScanEvent), parsed
    return fold.entry(parsed)


async def test_tiers_stations_and_lapse_index_follow_events_and_registry_changes(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    p = settings.redis_key_prefix
    v1 = write_registry(
        tmp_path / "v1",
        [
            {"code": A, "name": "甲村委会", "pop": "3000"},
            {"code": B, "name": "乙村委会", "pop": "1000"},
            {"code": C, "name": "丙居委会", "pop": "5000"},  # a community: not counted
            {"code": D, "name": "丁村委会"},  # population unknown: in no tier
        ],
    )
    await load_registry(redis, p, read_registry(v1), population_tiers=(2500,))
    writer = ReadModelWriter(redis, p, 3600)
    await writer.apply(
        [
            fold.Record(
                "t",
                0,
                0,
                [
                    event(1, "sf", A, 40, station="S1"),
                    event(2, "yto", B, 1, station="S2"),
                    event(3, "yto", B, 3, station="S3"),
                    event(4, "sf", C, 1, station="S9"),
                    event(5, "yto", A, 2),
                ],
            )
        ]
    )

    async def county() -> dict[str, str]:
        return dict(await redis.hgetall(names.key(p, names.REGION, "140322")))

    fig = await county()
    assert (fig["villages_total"], fig["villages_total@p2500"]) == ("3", "1")
    assert (fig["villages_reached"], fig["villages_reached@p2500"]) == ("2", "1")
    assert (fig["villages_reached|carrier:sf"], fig["villages_reached|carrier:yto"]) == ("1", "2")
    assert fig["villages_reached|carrier:yto@p2500"] == "1"
    assert (fig["villages_with_station"], fig["villages_with_station@p2500"]) == ("2", "1")
    assert await redis.smembers(names.key(p, names.STATIONS, B)) == {"S2", "S3"}

    cutoff = (NOW - timedelta(days=30)).timestamp() * 1000
    index = names.key(p, names.REACH_INDEX, "140322")
    assert set(await redis.zrange(index, 0, -1)) == {A, B}  # the community is not indexed
    assert await redis.zscore(index, A) == pytest.approx((NOW - timedelta(days=2)).timestamp() * 1000, abs=1)
    assert await redis.zcount(index, cutoff, "+inf") == 2
    assert await redis.zcount(f"{index}|carrier:sf", cutoff, "+inf") == 0  # sf's only reach is 40 days old
    assert await redis.zcard(f"{index}|carrier:sf") == 1
    assert await redis.zcount(names.key(p, names.REACH_INDEX, "140322205@p2500"), cutoff, "+inf") == 1

    # A new edition: C becomes a village, B grows past the tier, A shrinks below it.
    v2 = write_registry(
        tmp_path / "v2",
        [
            {"code": A, "name": "甲村委会", "pop": "2000"},
            {"code": B, "name": "乙村委会", "pop": "3000"},
            {"code": C, "name": "丙居委会", "pop": "5000", "kind": "village"},
            {"code": D, "name": "丁村委会"},
        ],
    )
    report = await load_registry(redis, p, read_registry(v2), population_tiers=(2500,))
    assert report.reclassified == 1
    fig = await county()
    assert (fig["villages_total"], fig["villages_total@p2500"]) == ("4", "2")  # A B C D; B C
    assert (fig["villages_reached"], fig["villages_reached@p2500"]) == ("3", "2")
    assert (fig["villages_reached|carrier:sf"], fig["villages_reached|carrier:sf@p2500"]) == ("2", "1")  # A C; C
    assert (fig["villages_with_station"], fig["villages_with_station@p2500"]) == ("3", "2")  # A B C; B C
    assert set(await redis.zrange(f"{index}@p2500", 0, -1)) == {B, C}
    assert set(await redis.zrange(index, 0, -1)) == {A, B, C}

    # New tiers: every village moves to them in the same load.
    await load_registry(redis, p, read_registry(v2), population_tiers=(1000, 2500))
    fig = await county()
    assert (fig["villages_total@p1000"], fig["villages_reached@p1000"]) == ("3", "3")  # A B C
    assert fig["villages_total@p2500"] == "2"
    assert await redis.hget(f"{p}:reg:meta", "population_tiers") == "1000,2500"
    national = await stored.nation(redis, p)
    assert national["villages_reached@p1000"] == "3" and national["villages_total"] == "4"

    # Loading the same edition again changes nothing.
    before = await county()
    await load_registry(redis, p, read_registry(v2), population_tiers=(1000, 2500))
    assert await county() == before
