"""The Faust worker as a real process on the real broker and Redis."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ingest_service.publisher import Publisher
from lastmile import names, scan
from lastmile.settings import Settings
from lastmile.topics import ensure_topics, partition_for
from lastmile_dev.devstack import Proc
from tests.support import seeded, stored
from tests.support.services import service_env, start

pytestmark = pytest.mark.integration

VILLAGES = [f"1403222052{i:02d}" for i in range(20)]


def start_worker(settings: Settings, logs: Path) -> Proc:
    return start("worker", service_env(settings, LOG_LEVEL=os.environ.get("TEST_WORKER_LOG_LEVEL", "INFO")), logs)


def events(n: int, start: int = 0) -> list[scan.ScanEvent]:
    now = datetime.now(UTC)
    out = []
    for i in range(start, start + n):
        raw = {
            "event_id": f"w-{i}",
            "carrier": "sf",
            "waybill": f"W{i}",
            "event_type": "delivered",
            "location_code": VILLAGES[i % len(VILLAGES)],
            "occurred_at": (now - timedelta(hours=i)).isoformat(),
        }
        result = scan.validate(raw, now=now)
        assert isinstance(result, scan.ScanEvent)
        out.append(result)
    return out


@pytest.fixture
async def registry(settings: Settings, redis: aioredis.Redis) -> None:
    await seeded.seed_registry(redis, settings.redis_key_prefix, dict.fromkeys(VILLAGES, "village"))
    await ensure_topics(settings)


@pytest.fixture
async def publisher(settings: Settings, registry: None) -> AsyncIterator[Publisher]:
    pub = Publisher(settings)
    pub.start()
    for _ in range(400):
        if pub.connected:
            break
        await asyncio.sleep(0.05)
    assert pub.connected, "the publisher did not connect to the broker"
    yield pub
    await pub.stop()


async def stats(redis: aioredis.Redis, settings: Settings) -> dict[str, int]:
    return await stored.stats(redis, settings.redis_key_prefix)


async def wait_applied(redis: aioredis.Redis, settings: Settings, n: int, worker: Proc, within: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        assert worker.alive(), worker.log_tail()
        if (await stats(redis, settings)).get(names.stat.EVENTS_APPLIED, 0) >= n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"applied {await stats(redis, settings)}; wanted {n}\n{worker.log_tail()}")


async def test_records_the_worker_cannot_use_are_dead_lettered_and_the_stream_goes_on(
    settings: Settings, redis: aioredis.Redis, registry: None, tmp_path: Path
) -> None:
    partitions = settings.scan_topic_partitions
    home = [v for v in VILLAGES if partition_for(v, partitions) == 0]
    away = next(v for v in VILLAGES if partition_for(v, partitions) != 0)
    good = [e.to_json() | {"location_code": home[i % len(home)]} for i, e in enumerate(events(3))]
    bad_event = {**good[0], "event_id": "", "carrier": "SF"}
    unknown = {**good[1], "event_id": "stray-1", "location_code": "140322205999"}
    misplaced = {**good[1], "event_id": "misplaced-1", "location_code": away}  # its location's partition is not 0
    records: list[bytes | None] = [
        b"\x00not json at all",
        orjson.dumps({"events": [bad_event, good[2]]}),
        orjson.dumps(unknown),
        orjson.dumps({"events": "nope"}),
        None,
        orjson.dumps(good[0]),
        orjson.dumps({"events": [good[1]]}),
        orjson.dumps({"events": [misplaced]}),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for value in records:
            await producer.send_and_wait(settings.scan_topic, value, key=b"direct", partition=0)
    finally:
        await producer.stop()

    worker = start_worker(settings, tmp_path)
    try:
        await wait_applied(redis, settings, 3, worker)
        consumer = AIOKafkaConsumer(
            settings.dead_letter_topic, bootstrap_servers=settings.kafka_bootstrap_servers, auto_offset_reset="earliest"
        )
        await consumer.start()
        letters: list[dict[str, Any]] = []
        try:
            for _ in range(50):
                for msgs in (await consumer.getmany(timeout_ms=200)).values():
                    letters += [orjson.loads(m.value) | {"header": dict(m.headers)} for m in msgs]
                if len(letters) >= 6:
                    break
        finally:
            await consumer.stop()
    finally:
        worker.stop()

    reasons = sorted((d["source"]["offset"], d["reason"]) for d in letters)
    assert [offset for offset, _ in reasons] == [0, 1, 2, 3, 4, 7]
    assert reasons[0][1].startswith("not JSON")
    assert "event_id: must be 1-128" in reasons[1][1] and "carrier: must be 2-32" in reasons[1][1]
    assert reasons[2][1] == "location_code 140322205999 is not in the registry"
    assert reasons[3][1] == "'events' must be an array"
    assert reasons[4][1] == "record has no value"
    home_of_away = partition_for(away, partitions)
    assert reasons[5][1].startswith(
        f"location_code {away} belongs to partition {home_of_away} of the scan topic, not 0"
    )
    assert all(d["header"][names.HEADER_DEAD_LETTER_REASON] for d in letters)
    st = await stats(redis, settings)
    assert st[names.stat.EVENTS_APPLIED] == 3
    assert st[names.stat.DEAD_LETTERS] == 6  # counted once each, with the records they came in
    assert (await stored.offsets(redis, settings.redis_key_prefix))[f"{settings.scan_topic}:0"] == 7
    assert not (Path.cwd() / f"{settings.consumer_group}-data").exists()  # Faust's folder goes to the temp dir


async def test_after_redis_loses_its_data_the_worker_resumes_from_the_read_model_not_from_kafka(
    settings: Settings, redis: aioredis.Redis, publisher: Publisher, tmp_path: Path
) -> None:
    batch = events(400)
    for i in range(0, 400, 100):
        await publisher.publish("sf", f"req-{i}", batch[i : i + 100])
    worker = start_worker(settings, tmp_path)
    try:
        await wait_applied(redis, settings, 400, worker)
        await asyncio.sleep(4)  # past Faust's commit interval: Kafka now says everything is done
    finally:
        worker.stop()

    # Redis loses everything but the registry (a restore from an old backup, a crash after the last save ...).
    prefix = settings.redis_key_prefix
    kinds = await stored.all_kinds(redis, prefix)
    await redis.delete(*await redis.keys(f"{prefix}:*"))
    await seeded.seed_registry(redis, prefix, kinds)

    worker = start_worker(settings, tmp_path)
    try:
        await wait_applied(redis, settings, 400, worker)
        more = events(100, start=400)
        await publisher.publish("sf", "req-more", more)
        await wait_applied(redis, settings, 500, worker)
    finally:
        worker.stop()
    nation = await stored.nation(redis, prefix)
    assert nation["type:delivered"] == "500"
    assert nation["villages_reached"] == str(len(VILLAGES))
    assert (await stats(redis, settings))[names.stat.EVENTS_DUPLICATE] == 0
