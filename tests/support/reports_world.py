"""A small county for the targets, laggards, history and subsidy tests, loaded through the real loader.

山西省 14 / 阳泉市 1403 / 盂县 140322 with five townships, and its neighbour 平定县 140321 with one:

=============  ==========  ==================================================
township       villages    codes
=============  ==========  ==================================================
140322100 秀水镇   10 (+1 community)  140322100201 .. 140322100210 (+ 140322100001)
140322101 孙家庄镇  2              140322101201, 140322101202
140322102 路家村镇  4              140322102201 .. 140322102204
140322103 城关街道  0 (1 community)   140322103001
140322104 梁家寨乡  3              140322104201 .. 140322104203
140321100 冠山镇   2              140321100201, 140321100202
=============  ==========  ==================================================

So 盂县 has 19 administrative villages, 平定县 2, 阳泉市, 山西省 and the nation 21. Every expected figure in
the tests is counted by hand from this table and the events each test applies.
"""

from __future__ import annotations

import csv
import itertools
from datetime import datetime
from pathlib import Path

import redis.asyncio as aioredis

from coverage_service import fold
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.writer import ReadModelWriter
from lastmile import scan
from lastmile.registry import read_registry
from lastmile.settings import Settings

YUXIAN, PINGDING = "140322", "140321"
XIUSHUI, SUNJIA, LUJIA, CHENGGUAN, LIANGJIA, GUANSHAN = (
    "140322100",
    "140322101",
    "140322102",
    "140322103",
    "140322104",
    "140321100",
)
TOWNSHIPS = {
    XIUSHUI: ("秀水镇", YUXIAN, 10),
    SUNJIA: ("孙家庄镇", YUXIAN, 2),
    LUJIA: ("路家村镇", YUXIAN, 4),
    CHENGGUAN: ("城关街道", YUXIAN, 0),
    LIANGJIA: ("梁家寨乡", YUXIAN, 3),
    GUANSHAN: ("冠山镇", PINGDING, 2),
}
COMMUNITIES = {XIUSHUI + "001": "城关社区居委会", CHENGGUAN + "001": "新城社区居委会"}
REGIONS = 1 + 1 + 1 + 2 + len(TOWNSHIPS)  # the nation, 14, 1403, two counties, six townships

_ids = itertools.count()


def village(township: str, i: int) -> str:
    """The i-th administrative village (1-based) of a township."""
    return f"{township}{200 + i}"


def write_registry(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    villages = [
        [village(t, i), f"{name[:2]}{i}村委会", t, county]
        for t, (name, county, n) in TOWNSHIPS.items()
        for i in range(1, n + 1)
    ]
    villages += [[code, name, code[:9], code[:6]] for code, name in COMMUNITIES.items()]
    tables = {
        "provinces": (["code", "name"], [["14", "山西省"]]),
        "cities": (["code", "name", "provinceCode"], [["1403", "阳泉市", "14"]]),
        "areas": (
            ["code", "name", "cityCode", "provinceCode"],
            [[YUXIAN, "盂县", "1403", "14"], [PINGDING, "平定县", "1403", "14"]],
        ),
        "streets": (
            ["code", "name", "areaCode", "provinceCode", "cityCode"],
            [[t, name, county, "14", "1403"] for t, (name, county, _) in TOWNSHIPS.items()],
        ),
        "villages": (
            ["code", "name", "streetCode", "provinceCode", "cityCode", "areaCode"],
            [[code, name, town, "14", "1403", county] for code, name, town, county in villages],
        ),
    }
    for stem, (header, rows) in tables.items():
        with open(folder / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
    return folder


def event(
    code: str, when: datetime | str, *, carrier: str = "sf", event_type: str = "delivered", station: str | None = None
) -> fold.Entry:
    i = next(_ids)
    raw = {
        "event_id": f"rp{i}",
        "carrier": carrier,
        "waybill": f"RP{i:08d}",
        "event_type": event_type,
        "location_code": code,
        "occurred_at": when if isinstance(when, str) else when.isoformat(),
    }
    if station is not None:
        raw["station_id"] = station
    parsed = scan.validate(raw, now=datetime.now().astimezone())
    assert isinstance(parsed, scan.ScanEvent), parsed
    return fold.entry(parsed)


class County:
    """The registry loaded under the test's prefix, and a writer applying events as Kafka records would."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis, self.prefix = redis, settings.redis_key_prefix
        self.writer = ReadModelWriter(redis, self.prefix, 3600)
        self._offsets = itertools.count()

    async def load(self, folder: Path) -> None:
        await load_registry(self.redis, self.prefix, read_registry(write_registry(folder)), population_tiers=(2500,))

    async def apply(self, *entries: fold.Entry) -> None:
        await self.writer.apply([fold.Record("t", 0, next(self._offsets), list(entries))])
