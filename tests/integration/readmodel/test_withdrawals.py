"""Corrections in the real Redis: after random interleavings of events, withdrawals (before or after their original),
replacements, redelivered corrections and writers that crash between deciding a correction and storing its offset,
the read model equals one folded, in a second key prefix, from the surviving events alone.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from coverage_service import fold
from coverage_service.readmodel import history
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.withdrawals import Withdrawals
from coverage_service.readmodel.writer import ReadModelWriter
from lastmile import correction, names, scan
from lastmile.registry import read_registry
from lastmile.settings import Settings
from tests.support.regulator_world import national_api
from tests.support.services import SAMPLE, sample_units
from tests.support.stored import figures

pytestmark = pytest.mark.integration

COUNTY = "140322"
UNITS = sorted(sample_units(lambda row: row["areaCode"] == COUNTY))[:40]
TOWNSHIPS = sorted({u[:9] for u in UNITS})


def event(i: int, rng: random.Random, now: datetime) -> scan.ScanEvent:
    code = rng.choice(UNITS + TOWNSHIPS[:2])
    kinds = scan.EVENT_TYPES if len(code) == 12 else ("arrived_at_hub", "out_for_delivery")
    raw: dict[str, Any] = {
        "event_id": f"e{i}",
        "carrier": rng.choice(["sf", "zto"]),
        "waybill": f"W{i}",
        "event_type": rng.choice(kinds),
        "location_code": code,
        "occurred_at": (now - timedelta(hours=rng.choice([1, 5, 30, 200, 900]))).isoformat(),
    }
    if raw["event_type"] == "delivery_failed":
        raw["reason"] = "nobody home"
    if rng.random() < 0.4:
        raw["cooperation_model"] = rng.choice(["own_station", "postal_express"])
    if len(code) == 12 and rng.random() < 0.3:
        raw["station_id"] = rng.choice(["S1", "S2|x"])
    parsed = scan.validate(raw, now=now)
    assert isinstance(parsed, scan.ScanEvent), parsed
    return parsed


def withdrawal(index: int, e: scan.ScanEvent, replacement: scan.ScanEvent | None = None) -> fold.Withdrawal:
    return fold.Withdrawal(
        index, e, fold.entry(e), "wrong village", None if replacement is None else replacement.event_id
    )


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_withdrawals_in_any_order_leave_the_figures_of_the_surviving_events(
    redis: aioredis.Redis, settings: Settings, seed: int
) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    p, q = settings.redis_key_prefix, settings.redis_key_prefix + "-survivors"
    registry = read_registry(SAMPLE)
    for prefix in (p, q):
        await load_registry(redis, prefix, registry, population_tiers=(2500,))
    events = [event(i, rng, now) for i in range(160)]

    writer = ReadModelWriter(redis, p, 3600)
    withdrawals = Withdrawals(writer)
    offset = 0
    applied: set[str] = set()
    withdrawn: dict[str, str] = {}  # event_id -> status the corrections list must end with
    corrections: list[tuple[fold.Record, str]] = []  # every correction record sent, for redelivery

    async def send(record: fold.Record, *, crash: bool = False) -> None:
        nonlocal writer, withdrawals
        if record.withdrawals:
            await withdrawals.apply(record)
        if crash:  # the worker dies before the record's offset is stored: a new one takes it again
            writer = ReadModelWriter(redis, p, 3600)
            withdrawals = Withdrawals(writer)
            await send(record)
            return
        await writer.apply([record])

    pending = list(range(len(events)))
    rng.shuffle(pending)
    replaced = 0
    while pending or rng.random() < 0.2:
        roll = rng.random()
        if roll < 0.55 and pending:
            n = rng.randint(1, 12)
            batch, pending = pending[:n], pending[n:]
            record = fold.Record("t", 0, offset, [fold.entry(events[i]) for i in batch])
            applied.update(events[i].event_id for i in batch)
            await send(record, crash=rng.random() < 0.1)
        elif roll < 0.8:
            # Withdraw events applied or still to come; sometimes with a replacement (a new event, new id).
            chosen = rng.sample(range(len(events)), rng.randint(1, 3))
            ws = []
            for j, i in enumerate(chosen):
                e = events[i]
                if e.event_id in withdrawn:
                    continue
                replacement = None
                if rng.random() < 0.3:
                    replaced += 1
                    replacement = event(10_000 + replaced, rng, now)
                    events.append(replacement)
                    pending.append(len(events) - 1)
                ws.append(withdrawal(j, e, replacement))
                withdrawn[e.event_id] = "withdrawn"
            record = fold.Record("t", 0, offset, [], withdrawals=tuple(ws))
            corrections.append((record, "new"))
            await send(record, crash=rng.random() < 0.2)
        elif roll < 0.9 and corrections:
            # A redelivery of a correction record already applied: a replay, skipped whole.
            old, _ = rng.choice(corrections)
            await send(old)
            offset -= 1
        else:
            # A second correction for a withdrawn event, or one that alters what counted: both rejected.
            if withdrawn:
                eid = rng.choice(sorted(withdrawn))
                e = next(x for x in events if x.event_id == eid)
                record = fold.Record("t", 0, offset, [], withdrawals=(withdrawal(0, e),))
                await send(record)
            else:
                offset -= 1
        if rng.random() < 0.2:
            await withdrawals.resolve_pending()
        if rng.random() < 0.1:
            writer = ReadModelWriter(redis, p, 3600)  # a restarted worker: nothing kept in memory
            withdrawals = Withdrawals(writer)
        offset += 1
    await withdrawals.resolve_pending()

    survivors = [e for e in events if e.event_id not in withdrawn]
    assert survivors and len(survivors) < len(events), seed
    clean = ReadModelWriter(redis, q, 3600)
    await clean.apply([fold.Record("t", 0, 0, [fold.entry(e) for e in survivors])])
    got, want = await figures(redis, p), await figures(redis, q)
    assert got == want, (seed, sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k)))

    # Every correction is listed with what became of it.
    listed = [
        doc
        for shard in ("14",)
        for doc in [orjson.loads(v) for v in await redis.hvals(names.shard_key(p, shard, names.CORRECTIONS))]
    ]
    final = {d["event_id"]: d for d in listed if d["status"] == "withdrawn"}
    assert set(final) == set(withdrawn), seed
    assert all(d["status"] in ("withdrawn", "rejected") for d in listed), seed
    assert any(d["status"] == "rejected" and d["detail"].startswith("already withdrawn") for d in listed) or len(
        listed
    ) == len(final)
    assert not await redis.hgetall(names.shard_key(p, "14", names.CORRECTIONS_PENDING))


async def test_a_correction_that_alters_the_event_is_rejected_and_changes_nothing(
    redis: aioredis.Redis, settings: Settings
) -> None:
    now = datetime.now(UTC)
    p = settings.redis_key_prefix
    await load_registry(redis, p, read_registry(SAMPLE), population_tiers=(2500,))
    raw = {
        "event_id": "x1",
        "carrier": "sf",
        "waybill": "W",
        "event_type": "delivered",
        "location_code": UNITS[0],
        "occurred_at": (now - timedelta(hours=2)).isoformat(),
    }
    e = scan.validate(raw, now=now)
    altered = scan.validate({**raw, "occurred_at": (now - timedelta(hours=3)).isoformat()}, now=now)
    assert isinstance(e, scan.ScanEvent) and isinstance(altered, scan.ScanEvent)
    writer = ReadModelWriter(redis, p, 3600)
    await writer.apply([fold.Record("t", 0, 0, [fold.entry(e)])])
    before = await figures(redis, p)
    record = fold.Record("t", 0, 1, [], withdrawals=(withdrawal(0, altered),))
    assert await Withdrawals(writer).apply(record) == {"rejected": 1}
    await writer.apply([record])
    assert await figures(redis, p) == before
    (doc,) = [orjson.loads(v) for v in await redis.hvals(names.shard_key(p, UNITS[0][:2], names.CORRECTIONS))]
    assert doc["status"] == "rejected" and "differs" in doc["detail"]
    assert correction.fingerprint(e) != correction.fingerprint(altered)


@pytest.mark.parametrize("seed", [5, 6])
async def test_events_past_the_window_settle_into_the_floor_and_later_withdrawals_still_recount_exactly(
    redis: aioredis.Redis, settings: Settings, seed: int
) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    p, q = settings.redis_key_prefix, settings.redis_key_prefix + "-survivors"
    for prefix in (p, q):
        await load_registry(redis, prefix, read_registry(SAMPLE), population_tiers=(2500,))
    events = [event(i, rng, now) for i in range(150)]
    # Accepted over the last week, with a 3-day window: the older ones go straight to the floor.
    writer = ReadModelWriter(redis, p, 3600, correction_window_days=3)
    for offset, e in enumerate(events):
        received = now_ms - rng.randint(0, 6) * 86_400_000
        await writer.apply([fold.Record("t", 0, offset, [fold.entry(e)], received_ms=received)])
    withdrawals = Withdrawals(writer)
    offset = len(events)

    async def withdraw(chosen: list[scan.ScanEvent]) -> None:
        nonlocal offset
        record = fold.Record("t", 0, offset, [], withdrawals=tuple(withdrawal(j, e) for j, e in enumerate(chosen)))
        await withdrawals.apply(record)
        await writer.apply([record])
        offset += 1

    await withdraw(rng.sample(events, 15))
    # Two days on, the traces of the oldest window days settle into the floor; withdrawals go on against it.
    settled = await withdrawals.settle({names.offset_field("t", 0): now_ms + 2 * 86_400_000})
    assert settled > 0
    await withdraw(rng.sample(events, 25))
    await withdrawals.resolve_pending()

    docs = [orjson.loads(v) for v in await redis.hvals(names.shard_key(p, "14", names.CORRECTIONS))]
    gone = {d["event_id"] for d in docs if d["status"] == "withdrawn"}
    assert gone and any(d["status"] != "withdrawn" for d in docs)  # some were past the window
    survivors = [e for e in events if e.event_id not in gone]
    await ReadModelWriter(redis, q, 3600).apply([fold.Record("t", 0, 0, [fold.entry(e) for e in survivors])])
    assert await figures(redis, p) == await figures(redis, q), seed


async def test_a_past_snapshot_restated_equals_one_taken_then_from_the_surviving_events(
    redis: aioredis.Redis, settings: Settings
) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    day_ms = 86_400_000
    # Two days of events, each followed by its daily snapshot; then corrections of both days' events.
    accepted = {"A": now_ms - 3 * day_ms, "B": now_ms - 2 * day_ms}
    taken = {"A": accepted["A"] + 3_600_000, "B": accepted["B"] + 3_600_000}
    labels = {k: history.china_date(datetime.fromtimestamp(t / 1000, UTC)) for k, t in taken.items()}
    # Each scanned before it was accepted, as a snapshot taken now would see them.
    groups = {
        k: [event(i + 1000 * n, rng, datetime.fromtimestamp(at / 1000, UTC)) for i in range(60)]
        for n, (k, at) in enumerate(accepted.items())
    }
    p = settings.redis_key_prefix
    await load_registry(redis, p, read_registry(SAMPLE), population_tiers=(2500,))
    writer = ReadModelWriter(redis, p, 3600)
    offset = 0
    for k in ("A", "B"):
        await writer.apply([fold.Record("t", 0, offset, [fold.entry(e) for e in groups[k]], received_ms=accepted[k])])
        offset += 1
        await history.take(redis, p, labels[k], now_ms=taken[k], lapse_days=30)
    chosen = rng.sample(groups["A"], 12) + rng.sample(groups["B"], 12)
    record = fold.Record(
        "t", 0, offset, [], received_ms=now_ms, withdrawals=tuple(withdrawal(j, e) for j, e in enumerate(chosen))
    )
    assert (await Withdrawals(writer, lapse_days=30).apply(record))["withdrawn"] == 24
    gone = {e.event_id for e in chosen}

    regions = ["CN", "14", "1403", COUNTY, *TOWNSHIPS]
    restated_days = 0
    for k, survivors_of in (("A", ["A"]), ("B", ["A", "B"])):
        # Independently: a read model of the surviving events accepted before the snapshot, snapshotted then.
        q = f"{p}-as-of-{k}"
        await load_registry(redis, q, read_registry(SAMPLE), population_tiers=(2500,))
        survivors = [e for g in survivors_of for e in groups[g] if e.event_id not in gone]
        await ReadModelWriter(redis, q, 3600).apply([fold.Record("t", 0, 0, [fold.entry(e) for e in survivors])])
        await history.take(redis, q, labels[k], now_ms=taken[k], lapse_days=30)
        for code in regions:
            (published,) = await history.series(redis, p, code, labels[k], labels[k])
            (want,) = await history.series(redis, q, code, labels[k], labels[k])
            restated = history.restate(published, (await history.restatements(redis, p, code)).get(str(labels[k])))
            shown = {**published, **(restated or {})}
            figures = ("villages_reached", "villages_active", "villages_lapsed", "villages_with_station")
            assert {f: shown[f] for f in figures} == {f: want[f] for f in figures}, (k, code)
            restated_days += restated is not None
    assert restated_days > 0  # the corrections changed some published figure
    # The API shows the restated figures beside the published ones, JSON and CSV.
    async with national_api(settings) as client:
        body = (await client.get(f"/v1/coverage/{COUNTY}/history", params={"from": str(labels["A"])})).json()
        for entry in body["series"]:
            day = date.fromisoformat(entry["date"])
            (published,) = await history.series(redis, p, COUNTY, day, day)
            restated = history.restate(published, (await history.restatements(redis, p, COUNTY)).get(entry["date"]))
            assert entry["restated"] == restated and entry["villages_reached"] == published["villages_reached"]
        assert any(e["restated"] for e in body["series"])
        r = await client.get(f"/v1/coverage/{COUNTY}/history", params={"from": str(labels["A"]), "format": "csv"})
        header, *rows = r.text[1:].splitlines()
        assert header.endswith("restated_coverage_rate,restated_corrections") and len(rows) == len(body["series"])
