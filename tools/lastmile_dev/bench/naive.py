"""The baseline: the obvious Faust design, built here and measured in the same session as the real pipeline.

One Kafka record and one awaited Redis call per event, with no deduplication and no offsets in Redis: a yardstick, not
a design. It runs as its own process (``python -m lastmile_dev.bench.naive worker``); see docs/performance.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

import faust
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from lastmile import logs, names, scan
from lastmile.settings import Settings
from lastmile_dev.bench.core import Context, Figure, Result
from lastmile_dev.bench.generator import Generator
from lastmile_dev.bench.registry_load import registry_of
from lastmile_dev.bench.stack import settings_env
from lastmile_dev.devstack import Proc

COUNTER: Final = "events"
TARGET_RATIO: Final = 15.0
OPTIMIZED: Final = ("throughput", "sustained end-to-end throughput")  # scenario, figure
SEED_OFFSET: Final = 101
QUICK_EVENTS: Final = 4_000  # the quick run sends this many and waits for all of them
BACKLOG: Final = 30_000  # events kept queued ahead of the worker in the full run
PREBUILT_EVENTS_PER_S: Final = 8_000  # the load queued before the phase: twice this design's rate here
CHUNK: Final = 1_000
START_TIMEOUT_SECONDS: Final = 120.0
POLL_SECONDS: Final = 0.25  # the quick run's; the full run reads the counters once a second
REDIS_TIMEOUT_SECONDS: Final = 120.0  # the real worker's apply scripts may hold Redis for seconds


def counter_key(prefix: str, location_code: str) -> str:
    return names.key(prefix, names.REGION, location_code[:6])


# -- the worker process ----------------------------------------------------------------------------------


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.scan_topic_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        # The real worker's group timings, so that it joins as fast; they cost nothing per event.
        broker_session_timeout=settings.worker_session_timeout_seconds,
        broker_rebalance_timeout=settings.worker_session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.worker_session_timeout_seconds / 4),
    )
    topic = app.topic(settings.scan_topic, key_serializer="raw", value_serializer="raw", internal=False)
    redis = aioredis.from_url(settings.redis_url)
    prefix = settings.redis_key_prefix

    @app.agent(topic, name="naive-count")
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            event = scan.validate(orjson.loads(value), now=datetime.now(UTC))
            if isinstance(event, scan.ScanEvent):
                await redis.hincrby(counter_key(prefix, event.location_code), COUNTER, 1)

    return app


def run_worker(settings: Settings) -> None:
    """Run the naive worker until SIGTERM, the way coverage_service.worker.app.run starts the real one."""
    logs.configure("naive-worker", settings.log_level, settings.log_format)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = faust.Worker(
        create_app(settings),
        loglevel=settings.log_level,
        logging_config=logs.dict_config("naive-worker", settings.log_level, settings.log_format),
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()


# -- the scenario ----------------------------------------------------------------------------------------


async def counted(redis: aioredis.Redis, keys: list[str]) -> int:
    """Events the naive worker has applied: the sum of its per-county counters.

    The keys are known from the registry: a SCAN would walk the whole keyspace (a million registry keys
    nationally) and slow down the very thing it measures.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.hget(k, COUNTER)
        values = await pipe.execute()
    return sum(int(v or 0) for v in values)


async def _send(producer: AIOKafkaProducer, topic: str, events: list[dict[str, Any]]) -> None:
    """One record per event, keyed by location code (Kafka's murmur2 partitioner, as ingest's)."""
    futures = [await producer.send(topic, orjson.dumps(e), key=e["location_code"].encode()) for e in events]
    await asyncio.gather(*futures)


async def _topic(settings: Settings, *, create: bool) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10_000)
    await admin.start()
    try:
        if create:
            await admin.create_topics(
                [NewTopic(settings.scan_topic, settings.scan_topic_partitions, settings.kafka_replication_factor)]
            )
        else:
            with contextlib.suppress(Exception):  # the broker may not support deletion; the topic is unique
                await admin.delete_topics([settings.scan_topic])
    finally:
        await admin.close()


async def _forget(redis: aioredis.Redis, keys: list[str]) -> None:
    for start in range(0, len(keys), 5000):
        await redis.unlink(*keys[start : start + 5000])


async def run(ctx: Context) -> Result:
    config, stack = ctx.config, ctx.stack
    nonce = secrets.token_hex(3)
    base = stack.settings
    settings = base.replace(
        scan_topic=f"{base.scan_topic}.naive-{nonce}",
        consumer_group=f"{base.consumer_group}-naive-{nonce}",
        redis_key_prefix=f"{base.redis_key_prefix}-naive-{nonce}",
    )
    prefix = settings.redis_key_prefix
    cap = QUICK_EVENTS if config.quick else None
    # Its own generator: the run's shared one counts what the stack's read model must hold, and these
    # events never go there.
    registry = await registry_of(ctx)
    generator = Generator(registry, config.seed + SEED_OFFSET)
    keys = [counter_key(prefix, county.code) for county in registry.counties]
    poll_seconds = POLL_SECONDS if config.quick else 1.0

    await _topic(settings, create=True)
    redis = aioredis.from_url(settings.redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
    )
    await producer.start()
    sent = 0

    async def top_up(upto: int) -> None:
        nonlocal sent
        while sent < upto:
            events = generator.next_batch(min(CHUNK, upto - sent))
            await _send(producer, settings.scan_topic, events)
            sent += len(events)

    proc: Proc | None = None
    timeline: list[tuple[float, int]] = []
    try:
        # The load before the worker starts, for the whole phase at more than this design's rate (as the throughput
        # scenario's is built before it), so that making it does not compete; topped up only if it runs short.
        await top_up(cap or max(BACKLOG, int(config.duration_seconds * PREBUILT_EVENTS_PER_S)))
        log = stack.workdir / "logs" / "naive-worker.log"
        proc = Proc("naive-worker", [sys.executable, "-m", __name__, "worker"], log, env=settings_env(settings))
        proc.start()
        started = time.monotonic()
        first: tuple[float, int] | None = None
        while True:
            await asyncio.sleep(poll_seconds)
            now, count = time.monotonic(), await counted(redis, keys)
            if first is None:
                if not proc.alive():
                    raise RuntimeError(f"the naive worker exited; log {log}:\n{proc.log_tail()}")
                if now - started > START_TIMEOUT_SECONDS:
                    raise RuntimeError(f"the naive worker applied nothing in {START_TIMEOUT_SECONDS:.0f} s; log {log}")
                if count == 0:
                    continue
                first = (now, count)
            timeline.append((now - first[0], count))
            elapsed = now - first[0]
            if cap is not None:
                ctx.progress("naive: events applied", count, cap)
                if count >= cap or elapsed > START_TIMEOUT_SECONDS:
                    break
            else:
                ctx.progress("naive: seconds measured", min(elapsed, config.duration_seconds), config.duration_seconds)
                if elapsed >= config.duration_seconds:
                    break
                if sent - count < BACKLOG // 2:
                    await top_up(count + BACKLOG)
    finally:
        if proc is not None:
            proc.stop()
        await producer.stop()
        await _topic(settings, create=False)
        final = await counted(redis, keys)
        await _forget(redis, keys)
        await redis.aclose()

    (t0, c0), (t1, c1) = timeline[0], timeline[-1]
    rate = (c1 - c0) / (t1 - t0) if t1 > t0 else None
    return _result(ctx, rate, sent, final, generator, timeline, proc, settings)


def _result(
    ctx: Context,
    rate: float | None,
    sent: int,
    final: int,
    generator: Generator,
    timeline: list[tuple[float, int]],
    proc: Proc | None,
    settings: Settings,
) -> Result:
    expected = generator.expected()
    note = "one Kafka record and one awaited HINCRBY per event, one Faust worker process; no dedup"
    naive = Figure("obvious design throughput", rate, "events/s", "baseline", None, note=note)
    result = Result("naive", [naive])
    optimized = _optimized(ctx)
    if optimized is not None and rate:
        ratio = optimized / rate
        result.figures.append(
            Figure(
                "optimized / obvious design",
                ratio,
                "×",
                f"≥ {TARGET_RATIO:.0f}×",
                ratio >= TARGET_RATIO,
                baseline=rate,
                baseline_name="obvious design, events/s",
                note=f"sustained end-to-end {optimized:,.0f} events/s over the obvious design's {rate:,.0f}",
            )
        )
    # Without dedup the naive count is every record, re-sends included: exact against what was sent.
    complete = final >= sent
    result.exact = final == sent if complete else None
    result.samples = {
        "events_sent": sent,
        "events_counted": final,
        "events_distinct": expected["events_distinct"],
        "duplicates_sent": expected["duplicates_sent"],
        "overcount_from_duplicates": final - expected["events_distinct"] if complete else None,
        "timeline": [{"t": round(t, 3), "applied": c} for t, c in timeline],
        "worker_exit_code": proc.popen.returncode if proc is not None and proc.popen is not None else None,
        "topic": settings.scan_topic,
        "consumer_group": settings.consumer_group,
        "partitions": settings.scan_topic_partitions,
    }
    return result


def _optimized(ctx: Context) -> float | None:
    """The real pipeline's sustained events/s from the throughput scenario of this run, if it ran."""
    scenario, figure = OPTIMIZED
    found = ctx.results.get(scenario)
    if found is None:
        return None
    rate = found.samples.get("sustained_events_per_s")
    if isinstance(rate, int | float) and rate > 0:
        return float(rate)
    return next((float(f.value) for f in found.figures if f.name == figure and f.value), None)


if __name__ == "__main__":
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: python -m lastmile_dev.bench.naive worker   (settings from the environment)")
    run_worker(Settings.from_env())
