"""Active villages at every level equal a recount from the events, after random event sequences in random batches,
writer restarts, lapse-window crossings and registry changes.

Cities and provinces (and the nation, their sum) count active villages from the per-day counts the fold keeps,
townships and counties from their lapse indexes; the expected figures are counted here from the events alone.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from coverage_service import fold
from coverage_service.readmodel import queries
from coverage_service.readmodel.filters import Filter
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.writer import ReadModelWriter
from lastmile import names, scan
from lastmile.registry import read_registry
from lastmile.settings import Settings
from tests.support.oracle import window_start_ms

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
PROVINCES = {"14": "山西省", "15": "内蒙古自治区"}
CARRIERS = ("sf", "yto", "zto")
MODELS = ("postal_express", "express_express")
Unit = dict[str, str]  # code, name, kind ('' by the name), population ('' unknown)


def units(rng: random.Random) -> list[Unit]:
    """Two provinces of two cities, each of two counties of two townships of six village-level units: mostly
    administrative villages, some communities, populations around the tiers or unknown."""
    out = []
    for p in PROVINCES:
        for c in (f"{p}01", f"{p}02"):
            for a in (f"{c}01", f"{c}02"):
                for t in (f"{a}001", f"{a}002"):
                    for v in range(1, 7):
                        community = rng.random() < 0.2
                        name = f"{t}{v:03d}" + ("居委会" if community else "村委会")
                        population = "" if rng.random() < 0.15 else str(rng.choice([300, 900, 1200, 2600, 4000]))
                        out.append({"code": f"{t}{v:03d}", "name": name, "kind": "", "population": population})
    return out


def write_registry(folder: Path, villages: list[Unit]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    codes = [v["code"] for v in villages]
    tables = {
        "provinces": (["code", "name"], [[p, n] for p, n in PROVINCES.items()]),
        "cities": (["code", "name", "provinceCode"], [[c, c, c[:2]] for c in sorted({x[:4] for x in codes})]),
        "areas": (
            ["code", "name", "cityCode", "provinceCode"],
            [[a, a, a[:4], a[:2]] for a in sorted({x[:6] for x in codes})],
        ),
        "streets": (
            ["code", "name", "areaCode", "provinceCode", "cityCode"],
            [[t, t, t[:6], t[:2], t[:4]] for t in sorted({x[:9] for x in codes})],
        ),
        "villages": (
            ["code", "name", "streetCode", "provinceCode", "cityCode", "areaCode", "kind", "population"],
            [
                [v["code"], v["name"], *(v["code"][:n] for n in (9, 2, 4, 6)), v["kind"], v["population"]]
                for v in villages
            ],
        ),
    }
    for stem, (header, rows) in tables.items():
        with open(folder / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
    return folder


def is_village(u: Unit) -> bool:
    return u["kind"] == "village" or (u["kind"] == "" and u["name"].endswith("村委会"))


def expected_active(
    registry: list[Unit], last: dict[tuple[str, str], int], region: str, flt: Filter, start_ms: int
) -> int:
    """Administrative villages under ``region`` in the scope's tier whose last reach in its dimension is at or
    after ``start_ms``, from the events' times (``last``: (village, dimension) -> newest reach ms)."""
    n = 0
    for u in registry:
        if region != names.NATIONAL and not u["code"].startswith(region):
            continue
        if not is_village(u):
            continue
        if flt.min_population is not None and (not u["population"] or int(u["population"]) < flt.min_population):
            continue
        ms = last.get((u["code"], flt.dim))
        if ms is not None and ms >= start_ms:
            n += 1
    return n


def scan_event(i: int, code: str, carrier: str, model: str | None, at: datetime, now: datetime) -> scan.ScanEvent:
    raw: dict[str, object] = {
        "event_id": f"e{i}",
        "carrier": carrier,
        "waybill": f"W{i}",
        "event_type": "delivered" if i % 7 else "arrived_at_hub",  # some do not reach
        "location_code": code,
        "occurred_at": at.isoformat(),
    }
    if model is not None:
        raw["cooperation_model"] = model
    parsed = scan.validate(raw, now=now)
    assert isinstance(parsed, scan.ScanEvent), parsed
    return parsed


def last_reaches(events: Iterable[scan.ScanEvent]) -> dict[tuple[str, str], int]:
    last: dict[tuple[str, str], int] = {}
    for e in events:
        if not e.reaches:
            continue
        dims = ["", f"|carrier:{e.carrier}"] + ([f"|model:{e.cooperation_model}"] if e.cooperation_model else [])
        for d in dims:
            last[e.location_code, d] = max(last.get((e.location_code, d), 0), e.occurred_ms)
    return last


async def assert_recounted(
    reader: queries.Reader, registry: list[Unit], last: dict[tuple[str, str], int], tiers: tuple[int, ...], seed: int
) -> None:
    now = datetime.now(UTC)
    codes = [*sorted({u["code"][:n] for u in registry for n in (2, 4, 6, 9)}), names.NATIONAL]
    scopes = [Filter(min_population=t) for t in (None, *tiers)]
    scopes += [Filter(carrier=c) for c in CARRIERS] + [Filter(cooperation_model=m) for m in MODELS]
    scopes += [Filter(carrier="sf", min_population=tiers[-1])]
    # Today, and days ahead: villages cross out of the window as it moves; windows of 1 to 90 days.
    for ahead, days in [(0, 30), (0, 1), (0, 90), (1, 30), (12, 30), (29, 30), (30, 7), (45, 60)]:
        now_ms = int((now + timedelta(days=ahead)).timestamp() * 1000)
        start = window_start_ms(now_ms, days)
        for flt in scopes:
            got = await reader.figures(codes, flt, now_ms=now_ms, lapse_days=days)
            want = {c: expected_active(registry, last, c, flt, start) for c in codes}
            assert {c: f["villages_active"] for c, f in got.items()} == want, (seed, ahead, days, flt)
        # The breakdown of the nation and of a province: every carrier and model at once.
        for code in (names.NATIONAL, "15"):
            report, _, _ = await reader.region_report(code, Filter(), now_ms=now_ms, lapse_days=days)
            assert report is not None
            by_carrier = {e["carrier"]: e["villages_active"] for e in report["breakdown"]["by_carrier"] or []}
            want_carriers = {c: expected_active(registry, last, code, Filter(carrier=c), start) for c in CARRIERS}
            want_carriers["*"] = expected_active(registry, last, code, Filter(), start)
            assert by_carrier == {c: n for c, n in want_carriers.items() if c in by_carrier}, (seed, code, ahead)
            assert set(by_carrier) >= {c for c, n in want_carriers.items() if n}, (seed, code, ahead)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_active_counts_at_every_level_equal_a_recount_from_the_events(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    p = settings.redis_key_prefix
    registry = units(rng)
    tiers: tuple[int, ...] = (2500,)
    await load_registry(redis, p, read_registry(write_registry(tmp_path / "v1", registry)), population_tiers=tiers)
    now = datetime.now(UTC)
    villages = [u["code"] for u in registry]
    events = []
    for i in range(900):
        code = rng.choice(villages)
        # Mostly within the last 100 days (some beyond the 92 days counts are kept), a few minutes ahead at most.
        at = now - timedelta(minutes=rng.uniform(-4, 100 * 24 * 60))
        events.append(scan_event(i, code, rng.choice(CARRIERS), rng.choice([None, *MODELS]), at, now))
    rng.shuffle(events)  # late events: any order

    writer = ReadModelWriter(redis, p, 3600)
    offset, applied = 0, []
    while offset < len(events):
        n = rng.randint(1, 120)
        batch = events[offset : offset + n]
        records = [fold.Record("t", 0, offset + j, [fold.entry(e)]) for j, e in enumerate(batch)]
        await writer.apply(records)
        applied += batch
        offset += n
        if rng.random() < 0.3:
            writer = ReadModelWriter(redis, p, 3600)  # a restarted worker: nothing kept in memory
    reader = queries.Reader.on(redis, p)
    last = last_reaches(applied)
    await assert_recounted(reader, registry, last, tiers, seed)

    # A new edition: some villages become communities and back, populations cross the tiers, a new tier.
    for u in registry:
        r = rng.random()
        if r < 0.1:
            u["kind"] = "community" if is_village(u) else "village"
        elif r < 0.3:
            u["population"] = str(rng.choice([500, 1100, 3000]))
    tiers = (1000, 2500)
    await load_registry(redis, p, read_registry(write_registry(tmp_path / "v2", registry)), population_tiers=tiers)
    await assert_recounted(reader, registry, last, tiers, seed)

    # Events after the change, for villages old and new.
    more = [
        scan_event(
            10_000 + i, rng.choice(villages), rng.choice(CARRIERS), None, now - timedelta(days=rng.uniform(0, 40)), now
        )
        for i in range(200)
    ]
    await ReadModelWriter(redis, p, 3600).apply(
        [fold.Record("t", 0, len(events) + j, [fold.entry(e)]) for j, e in enumerate(more)]
    )
    await assert_recounted(reader, registry, last_reaches(applied + more), tiers, seed)


async def test_counts_of_days_past_keeping_expire(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    """A day's counts carry an expiry past the longest window; a day already past it is not written at all."""
    p = settings.redis_key_prefix
    registry = units(random.Random(7))
    await load_registry(redis, p, read_registry(write_registry(tmp_path / "r", registry)), population_tiers=(2500,))
    now = datetime.now(UTC)
    code, other = [u["code"] for u in registry if is_village(u)][:2]
    recent, ancient = now - timedelta(days=3), now - timedelta(days=95)
    entries = [scan_event(1, code, "sf", None, recent, now), scan_event(2, other, "sf", None, ancient, now)]
    await ReadModelWriter(redis, p, 3600).apply(
        [fold.Record("t", 0, i, [fold.entry(e)]) for i, e in enumerate(entries)]
    )
    day = fold.cst_day(int(recent.timestamp() * 1000))
    key = names.lapse_key(p, code[:4], day)
    assert await redis.hget(key, "villages_reached") == "1"
    ttl_days = await redis.ttl(key) / 86_400
    assert 92 - 3 - 1 < ttl_days <= 92 - 3 + 1
    ancient_day = fold.cst_day(int(ancient.timestamp() * 1000))
    assert not await redis.exists(names.lapse_key(p, other[:4], ancient_day))
    assert await redis.hget(names.key(p, names.LOCATION, other), "reached") == "1"  # reached, lapsed: not counted
