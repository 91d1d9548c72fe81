"""`lastmile rebuild` and `lastmile dead-letters` as real commands against the real broker and Redis.

The figures a worker folded are read back whole (every region and location hash, lapse index and station set),
Redis is wiped, and the rebuild must reproduce them exactly from the topic alone.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from coverage_service.fold import Record, cst_day, entry
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.writer import ReadModelWriter
from ingest_service.publisher import Publisher
from lastmile import correction, names, scan
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile.topics import Partitioner, ensure_topics
from tests.support import stored
from tests.support.services import SAMPLE, sample_villages, service_env, start

pytestmark = pytest.mark.integration

VILLAGES = sorted(sample_villages(lambda row: row["code"].startswith("140322")))[:40]
TYPES = ("delivered", "arrived_at_station", "out_for_delivery", "collected")


def lastmile(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastmile.cli", *argv],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_events(n: int) -> list[scan.ScanEvent]:
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        raw = {
            "event_id": f"rb-{i}",
            "carrier": ("sf", "zto", "ems")[i % 3],
            "waybill": f"W{i}",
            "event_type": TYPES[i % len(TYPES)],
            "location_code": VILLAGES[(i * 7) % len(VILLAGES)],
            "occurred_at": (now - timedelta(minutes=37 * i)).isoformat(),  # out of order, some days late
            "station_id": f"st-{i % 5}" if i % 2 else None,
        }
        result = scan.validate(raw, now=now)
        assert isinstance(result, scan.ScanEvent), result
        out.append(result)
    return out


async def read_model(redis: aioredis.Redis, prefix: str) -> dict[str, Any]:
    """Everything the figures are made of (not the stats, offsets and dedup markers, which record the run)."""
    out: dict[str, Any] = {}
    kinds = {names.REGION: "hash", names.LOCATION: "hash", names.REACH_INDEX: "zset", names.STATIONS: "set"}
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        kind = next((k for suffix, k in kinds.items() if f":{suffix}" in key), None)
        if kind is not None:
            if kind == "hash":
                out[key] = await redis.hgetall(key)
            elif kind == "zset":
                out[key] = await redis.zrange(key, 0, -1, withscores=True)
            else:
                out[key] = sorted(await redis.smembers(key))
    return out


async def applied(redis: aioredis.Redis, prefix: str) -> int:
    return (await stored.stats(redis, prefix)).get(names.stat.EVENTS_APPLIED, 0)


async def test_rebuild_after_a_wipe_reproduces_the_worker_figures_exactly(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    prefix = settings.redis_key_prefix
    await load_registry(redis, prefix, read_registry(SAMPLE), population_tiers=settings.population_tiers)
    await ensure_topics(settings)
    events = make_events(600)
    publisher = Publisher(settings)
    publisher.start()
    try:
        for _ in range(400):
            if publisher.connected:
                break
            await asyncio.sleep(0.05)
        for i in range(0, 600, 100):
            await publisher.publish(events[i].carrier, f"req-{i}", events[i : i + 100])
        # A carrier's retry: the first 150 again (three carriers, so per carrier as it would post them).
        for carrier in ("sf", "zto", "ems"):
            await publisher.publish(carrier, f"retry-{carrier}", [e for e in events[:150] if e.carrier == carrier])
    finally:
        await publisher.stop()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.scan_topic, b"{not json", key=b"direct", partition=1)
    finally:
        await producer.stop()

    worker = start("worker", service_env(settings), tmp_path)
    try:
        for _ in range(600):
            if await applied(redis, prefix) >= 600:
                break
            assert worker.alive(), worker.log_tail()
            await asyncio.sleep(0.1)
        assert await applied(redis, prefix) == 600, worker.log_tail()

        # While a worker runs, a wipe is refused and nothing is deleted.
        heartbeats = names.key(prefix, names.WORKER_HEARTBEAT, "*")
        for _ in range(100):
            if [k async for k in redis.scan_iter(match=heartbeats)]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"no worker heartbeat in Redis\n{worker.log_tail()}")
        refused = lastmile(settings, "rebuild", "--wipe", "--registry", str(SAMPLE), "--no-progress")
        assert refused.returncode == 1
        assert "running" in refused.stderr and "stop them" in refused.stderr
        assert await applied(redis, prefix) == 600
    finally:
        worker.stop()
    # A worker stopped cleanly takes its heartbeat with it, so the wipe below need not wait for it to expire.
    assert [k async for k in redis.scan_iter(match=heartbeats)] == [], worker.log_tail()
    before = await read_model(redis, prefix)
    assert len(before) > 50

    rebuilt = lastmile(settings, "rebuild", "--wipe", "--registry", str(SAMPLE), "--no-progress")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "600 events applied, 150 duplicates dropped" in rebuilt.stdout, rebuilt.stdout
    assert "1 invalid" in rebuilt.stdout
    after = await read_model(redis, prefix)
    assert after == before

    # Run again: everything is already applied, nothing changes.
    again = lastmile(settings, "rebuild", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "0 records folded" in again.stdout and "0 events applied" in again.stdout
    assert await read_model(redis, prefix) == before

    letters = lastmile(settings, "dead-letters", "--json")
    assert letters.returncode == 0, letters.stderr
    bodies = [orjson.loads(line) for line in letters.stdout.splitlines()]
    assert [b["source"]["partition"] for b in bodies] == [1]
    assert bodies[0]["reason"].startswith("not JSON")
    listed = lastmile(settings, "dead-letters")
    assert "not JSON" in listed.stdout and "1 dead letters" in listed.stderr


async def test_rebuild_without_a_registry_says_what_to_do(settings: Settings) -> None:
    result = lastmile(settings, "rebuild", "--no-progress")
    assert result.returncode == 1
    assert "give --registry DIR" in result.stderr
    wiped = lastmile(settings, "rebuild", "--wipe", "--no-progress")
    assert wiped.returncode == 1 and "--registry" in wiped.stderr


async def test_a_rebuild_decides_old_corrections_as_the_worker_did_by_the_log_s_own_clock(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Events and corrections accepted two months ago, beyond today's correction window: the rebuild keeps their
    traces by the time each record was accepted, so the withdrawals (one that came before its event) take effect."""
    prefix = settings.redis_key_prefix
    await ensure_topics(settings)
    now = datetime.now(UTC)
    events = make_events(60)
    old, recent = events[:40], events[40:]
    late = old[-1]  # its withdrawal comes first
    partition_of = Partitioner(settings.scan_topic_partitions)

    def at(days: float) -> str:
        return scan.format_time(now - timedelta(days=days))

    def withdrawing(es: list[scan.ScanEvent]) -> list[correction.Correction]:
        return [correction.Correction(e, "scanned at the wrong village") for e in es]

    records: list[scan.Batch | correction.Batch] = [
        scan.Batch(old[:-1], at(60)),
        correction.Batch(withdrawing(old[:6]), at(59)),
        correction.Batch(withdrawing([late]), at(58)),
        scan.Batch([late], at(57.9)),
        scan.Batch(recent, at(0)),
        correction.Batch(withdrawing(recent[:4]), at(0)),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for batch in records:
            items = batch.events if isinstance(batch, scan.Batch) else [c.event for c in batch.corrections]
            for p in sorted({partition_of(e.location_code) for e in items}):
                if isinstance(batch, scan.Batch):
                    part: Any = scan.Batch(
                        [e for e in batch.events if partition_of(e.location_code) == p], batch.received_at
                    )
                else:
                    part = correction.Batch(
                        [c for c in batch.corrections if partition_of(c.event.location_code) == p], batch.received_at
                    )
                await producer.send_and_wait(settings.scan_topic, msgspec.json.encode(part), partition=p)
    finally:
        await producer.stop()

    rebuilt = lastmile(settings, "rebuild", "--wipe", "--registry", str(SAMPLE), "--no-progress")
    assert rebuilt.returncode == 0, rebuilt.stderr
    gone = {e.event_id for e in [*old[:6], late, *recent[:4]]}
    survivors = [e for e in events if e.event_id not in gone]
    q = f"{prefix}-survivors"
    await load_registry(redis, q, read_registry(SAMPLE), population_tiers=settings.population_tiers)
    await ReadModelWriter(redis, q, 3600).apply([Record("t", 0, 0, [entry(e) for e in survivors])])
    docs = [orjson.loads(v) for v in await redis.hvals(names.shard_key(prefix, "14", names.CORRECTIONS))]
    assert sorted((d["event_id"], d["status"], d["detail"]) for d in docs) == sorted(
        (eid, "withdrawn", "") for eid in gone
    )
    assert await stored.figures(redis, prefix) == await stored.figures(redis, q)
    # The two-month-old days were settled into the floors at the end: no trace older than the window is left.
    assert not [
        k
        async for k in redis.scan_iter(match=f"{prefix}:*ledger-day:*")
        if int(str(k).rsplit(":", 1)[1]) < cst_day(int(now.timestamp() * 1000)) - settings.correction_window_days
    ]
