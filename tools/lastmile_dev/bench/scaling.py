"""Scenario: does the worker stage scale out? Two worker processes against one topic versus one.

The worker stage is measured alone, so that neither ingest nor the HTTP load can be the limit: events go straight into
a topic of their own, and each run gets a fresh consumer group and read model (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import defaultdict
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from coverage_service.readmodel.registry_store import load_registry
from lastmile import names
from lastmile.registry import Registry
from lastmile.settings import Settings
from lastmile.topics import ensure_topics, partition_for
from lastmile_dev.bench.core import Context, Figure, Result
from lastmile_dev.bench.exact import Exactness, applied, check_exact, forget_prefix
from lastmile_dev.bench.generator import Generator
from lastmile_dev.bench.stack import group_members
from lastmile_dev.devstack import Proc, StackError

TARGET_RATIO: Final = 1.6
SEED_OFFSET: Final = 202
JOIN_TIMEOUT_SECONDS: Final = 120.0
STALL_SECONDS: Final = 60.0
SAMPLE_SECONDS: Final = 0.1


@dataclasses.dataclass
class Phase:
    workers: int
    rate: float | None  # events/s from the group being stable to the last event applied
    total_seconds: float | None  # from starting the processes to the last event applied
    stable_after_seconds: float | None
    exact: Exactness
    timeline: list[tuple[float, int, str, int]]  # (t, applied, group state, members)


async def run(ctx: Context) -> Result:
    config, stack = ctx.config, ctx.stack
    assert ctx.registry is not None
    run_id = uuid.uuid4().hex[:6]
    base = stack.settings.replace(
        scan_topic=f"{stack.settings.scan_topic}.scaling-{run_id}",
        dead_letter_topic=f"{stack.settings.scan_topic}.scaling-{run_id}.deadletter",
    )
    gen = Generator(ctx.registry, config.seed + SEED_OFFSET)
    await ensure_topics(base)
    produce_seconds = await _preload(ctx, base, gen, config.scaling_events)
    expected = gen.expected()
    phases: list[Phase] = []
    try:
        for workers in (1, 2):
            settings = base.replace(
                consumer_group=f"{stack.settings.consumer_group}-scaling-{run_id}-{workers}",
                redis_key_prefix=f"{stack.settings.redis_key_prefix}-scaling{workers}",
            )
            phases.append(await _phase(ctx, settings, ctx.registry, workers, expected))
    finally:
        await _delete_topics(base)
    return _result(phases, expected, produce_seconds, config.scaling_events, base)


async def _preload(ctx: Context, settings: Settings, gen: Generator, total: int) -> float:
    """Write ``total`` events into the topic as ingest would; return the seconds it took."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        max_request_size=16 * 1024 * 1024,
    )
    await producer.start()
    started = time.monotonic()
    try:
        partitions = len(await producer.partitions_for(settings.scan_topic))
        sent = 0
        pending: list[Any] = []
        while sent < total:
            batch = gen.next_batch(min(ctx.config.batch_size, total - sent))
            sent += len(batch)
            by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for event in batch:
                by_partition[partition_for(event["location_code"], partitions)].append(event)
            received_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            request_id = uuid.uuid4().hex
            headers = [
                (names.HEADER_SCHEMA, names.SCHEMA_BATCH_V1.encode()),
                (names.HEADER_CARRIER, batch[0]["carrier"].encode()),
                (names.HEADER_REQUEST_ID, request_id.encode()),
            ]
            for partition, events in by_partition.items():
                value = orjson.dumps({"received_at": received_at, "events": events})
                pending.append(
                    await producer.send(
                        settings.scan_topic, value, key=request_id.encode(), partition=partition, headers=headers
                    )
                )
            if len(pending) >= 200:
                await asyncio.gather(*pending)
                pending.clear()
            ctx.progress("scaling: preloading the topic", sent, total)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


async def _phase(ctx: Context, settings: Settings, registry: Registry, workers: int, expected: dict[str, Any]) -> Phase:
    what = f"scaling: {workers} worker{'s' if workers > 1 else ''}"
    prefix = settings.redis_key_prefix
    total = expected["events_distinct"]
    redis = aioredis.from_url(settings.redis_url, decode_responses=True)
    procs: list[Proc] = []
    try:
        await forget_prefix(redis, prefix)
        await load_registry(
            redis,
            prefix,
            registry,
            progress=lambda done, n: ctx.progress(f"{what}: loading the registry", done, n),
            population_tiers=settings.population_tiers,
        )
        started = time.monotonic()
        procs = [ctx.stack.start_worker(settings) for _ in range(workers)]
        timeline, stable_at, done_at = await _watch(ctx, what, settings, redis, procs, workers, total)
        exact = await check_exact(redis, prefix, registry, expected)
    finally:
        for proc in procs:
            proc.stop()
        await forget_prefix(redis, prefix)
        await redis.aclose()

    rate = None
    if done_at is not None and stable_at is not None:
        at_stable = max((a for t, a, _, _ in timeline if t <= stable_at - started), default=0)
        if done_at > stable_at:  # in a quick run, a tenth of a second or so: no figure to quote
            rate = (total - at_stable) / (done_at - stable_at)
    return Phase(
        workers,
        rate,
        None if done_at is None else done_at - started,
        None if stable_at is None else stable_at - started,
        exact if done_at is not None else Exactness(False, exact.checked, ["stalled", *exact.mismatches]),
        timeline,
    )


async def _watch(
    ctx: Context, what: str, settings: Settings, redis: aioredis.Redis, procs: list[Proc], workers: int, total: int
) -> tuple[list[tuple[float, int, str, int]], float | None, float | None]:
    """Sample applied and the group until all ``total`` are applied; return (timeline, stable since, done at)."""
    started = time.monotonic()
    timeline: list[tuple[float, int, str, int]] = []
    stable_since: float | None = None
    last, last_change = -1, started
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=5_000)
    await admin.start()
    try:
        while True:
            now = time.monotonic()
            count = await applied(redis, settings.redis_key_prefix)
            try:
                state, members = await group_members(settings, settings.consumer_group, admin)
            except Exception:
                state, members = "", 0
            timeline.append((round(now - started, 3), count, state, members))
            complete = state == "Stable" and members == workers
            stable_since = (stable_since or now) if complete else None
            ctx.progress(f"{what}: events applied", count, total)
            if count >= total:
                return timeline, stable_since or now, now
            dead = [p for p in procs if not p.alive()]
            if dead:
                raise StackError(f"{dead[0].name} exited; log {dead[0].log_path}:\n{dead[0].log_tail()}")
            if count != last:
                last, last_change = count, now
            elif now - last_change > (JOIN_TIMEOUT_SECONDS if count == 0 else STALL_SECONDS):
                return timeline, stable_since, None
            await asyncio.sleep(SAMPLE_SECONDS)
    finally:
        await admin.close()


async def _delete_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        with contextlib.suppress(Exception):  # a broker without deletion keeps them; the names are unique
            await admin.delete_topics([settings.scan_topic, settings.dead_letter_topic])
    finally:
        await admin.close()


def _result(
    phases: list[Phase], expected: dict[str, Any], produce_seconds: float, n: int, settings: Settings
) -> Result:
    one, two = phases
    ratio = two.rate / one.rate if one.rate and two.rate else None
    result = Result("scaling", exact=one.exact.ok and two.exact.ok)
    result.figures = [
        Figure("worker stage, 1 worker", one.rate, "events/s", "", None, note=f"{n:,} events preloaded"),
        Figure(
            "worker stage, 2 workers",
            two.rate,
            "events/s",
            f"≥ {TARGET_RATIO}× 1 worker",
            None if ratio is None else ratio >= TARGET_RATIO,
            baseline=one.rate,
            baseline_name="1 worker",
            note="from the consumer group being stable to the last event applied",
        ),
        Figure("figures exact, both runs", 1.0 if result.exact else 0.0, "", "exact", result.exact),
    ]
    result.samples = {
        "events": n,
        "events_distinct": expected["events_distinct"],
        "duplicates": expected["duplicates_sent"],
        "preload_seconds": produce_seconds,
        "topic": settings.scan_topic,
        "partitions": settings.scan_topic_partitions,
        "ratio": ratio,
        "phases": [
            {
                "workers": p.workers,
                "events_per_s": p.rate,
                "total_seconds": p.total_seconds,
                "stable_after_seconds": p.stable_after_seconds,
                "exactness": p.exact.as_sample(),
                "timeline": [{"t": t, "applied": a, "group": s, "members": m} for t, a, s, m in p.timeline],
            }
            for p in phases
        ],
    }
    return result
