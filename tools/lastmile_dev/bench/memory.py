"""Scenario: Redis memory after the national registry and millions of events, per village, per event, and dedup.

Events skip HTTP and go straight to the scan topic in ingest's record format, so that millions reach the real workers
fast; how each figure is measured is on docs/performance.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coverage_service.dedup import DIGEST_BYTES
from lastmile import names, scan
from lastmile.settings import Settings
from lastmile.topics import Partitioner
from lastmile_dev.bench.core import Context, Figure, Result
from lastmile_dev.bench.exact import check_exact, counters
from lastmile_dev.bench.generator import Generator
from lastmile_dev.bench.registry_load import fresh_load, registry_folder, registry_of, used_memory

T = TypeVar("T")
SEED_OFFSET: Final = 404
BATCH: Final = 1_000
MAX_BACKLOG: Final = 200_000  # events published but not yet folded
STALL_SECONDS: Final = 120.0  # no progress for this long ends the wait
SAMPLE_KEYS: Final = 1_000
REDIS_TIMEOUT_SECONDS: Final = 120.0
ACK_TIMEOUT_SECONDS: Final = 60.0
MB: Final = 1024 * 1024
GIB: Final = 1024 * MB
NATIONAL_AVERAGE_RATE: Final = 4_000  # events/s, the national average the issue names
DEDUP_TARGET_BYTES: Final = 16
BASELINE_EVENTS: Final = 100_000  # markers of the old layout written for the same-run baseline
INFO_FIELDS: Final = ("used_memory", "used_memory_rss", "used_memory_dataset", "mem_fragmentation_ratio")
COUNTED: Final = (names.stat.EVENTS_APPLIED, names.stat.EVENTS_DUPLICATE, names.stat.EVENTS_UNKNOWN_LOCATION)


def records_of(events: list[dict[str, Any]], partition_of: Callable[[str], int], received_at: str) -> dict[int, bytes]:
    """Ingest's record format: one record per partition holding that partition's events, in order."""
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_partition[partition_of(e["location_code"])].append(e)
    return {p: orjson.dumps({"received_at": received_at, "events": batch}) for p, batch in by_partition.items()}


async def patiently(action: Callable[[], Awaitable[T]]) -> T:
    """Run a read, waiting while Redis is BUSY or slow: a long apply script holds it (and answers BUSY past 5 s)."""
    deadline = time.monotonic() + REDIS_TIMEOUT_SECONDS
    while True:
        try:
            return await action()
        except (RedisTimeoutError, ResponseError) as exc:
            if (isinstance(exc, ResponseError) and not str(exc).startswith("BUSY")) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def folded(redis: aioredis.Redis, prefix: str) -> dict[str, int]:
    """The worker's own counters: events applied, duplicate and of unknown location."""
    return await counters(redis, prefix, list(COUNTED))


async def dedup_memory(redis: aioredis.Redis, prefix: str) -> dict[str, Any]:
    """Every dedup key's MEMORY USAGE and TTL, and how many digests they hold."""
    pattern = names.pattern(prefix, names.DEDUP)
    keys = [k.decode() if isinstance(k, bytes) else str(k) async for k in redis.scan_iter(match=pattern, count=20_000)]
    async with redis.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.memory_usage(k, samples=0)
            pipe.ttl(k)
        answers = await pipe.execute()
    # The base key of an hour (no chunk number) holds how many bytes of digests its strings hold.
    bases = [k for k in keys if k.split(names.DEDUP, 1)[1].count(":") == 2]  # <topic>:<partition>:<hour>
    filled = [int(v or 0) for v in await redis.mget(bases)] if bases else []
    digests = sum(filled) // DIGEST_BYTES
    total = sum(int(m) for m in answers[0::2] if m is not None)
    ttls = [int(t) for t in answers[1::2]]
    return {
        "keys": len(keys),
        "digests": digests,
        "bytes_total": total,
        "bytes_per_event": total / digests if digests else None,
        "ttl_min_s": min(ttls, default=None),
        "ttl_max_s": max(ttls, default=None),
    }


async def ledger_memory(redis: aioredis.Redis, prefix: str) -> dict[str, Any]:
    """The correction ledger's MEMORY USAGE by kind of key (the locations' packed traces, their hashes, the per-day
    sets of locations and their list), and the bytes of traces the strings hold (their STRLEN)."""
    out: dict[str, Any] = {"keys": 0, "bytes_total": 0, "trace_bytes": 0, "by_kind": {}}
    for suffix in (names.TRACES, names.LEDGER, names.LEDGER_DAY, names.LEDGER_DAYS):
        keys = [
            k.decode() if isinstance(k, bytes) else str(k)
            async for k in redis.scan_iter(match=names.pattern(prefix, suffix), count=20_000)
        ]
        used = 0
        for start in range(0, len(keys), 5_000):
            async with redis.pipeline(transaction=False) as pipe:
                for k in keys[start : start + 5_000]:
                    pipe.memory_usage(k, samples=0)
                    if suffix == names.TRACES:
                        pipe.strlen(k)
                replies = await pipe.execute()
            step = 2 if suffix == names.TRACES else 1
            used += sum(int(m) for m in replies[::step] if m is not None)
            if suffix == names.TRACES:
                out["trace_bytes"] += sum(int(n) for n in replies[1::2])
        out["by_kind"][suffix] = {"keys": len(keys), "bytes": used}
        out["keys"] += len(keys)
        out["bytes_total"] += used
    return out


async def key_per_event_bytes(redis: aioredis.Redis, prefix: str, events: int = BASELINE_EVENTS) -> float:
    """The baseline, on the same server: the layout dedup replaced, one ``SET <p>:seen:<carrier>:<event_id> 1 NX EX``
    key per event, measured by used_memory around ``events`` of them, then deleted."""
    base = f"{prefix}-baseline:seen:sf:bench-"
    before = await used_memory(redis)
    for start in range(0, events, 5_000):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(events, start + 5_000)):
                pipe.set(f"{base}{n:x}", "1", nx=True, ex=259_200)
            await pipe.execute()
    grown = await used_memory(redis) - before
    keys = [k async for k in redis.scan_iter(match=base + "*", count=20_000)]
    for start in range(0, len(keys), 5_000):
        await redis.unlink(*keys[start : start + 5_000])
    return grown / events


async def registry_memory(ctx: Context, settings: Settings, folder: Path) -> tuple[int | None, str]:
    """Bytes a fresh registry load takes: the registry scenario's measurement, or one made now."""
    earlier = (getattr(ctx, "results", None) or {}).get("registry_load")
    if earlier is not None and earlier.samples.get("registry_dir") == str(folder):
        measured = earlier.samples.get("registry_memory_bytes")
        if isinstance(measured, int):
            return measured, "the registry scenario's fresh load"
    ctx.progress("memory: fresh registry load into a scratch database", 0, 1)
    load = await fresh_load(settings, folder)
    if load is None:
        return None, "not measured: the scratch database is not empty"
    return load.memory_bytes, "a fresh load into an empty scratch database"


async def run(ctx: Context) -> Result:
    config, settings = ctx.config, ctx.stack.settings
    prefix, total = settings.redis_key_prefix, config.memory_events
    folder = registry_folder(config.registry_dir)
    registry = await registry_of(ctx)
    units = sum(1 for _ in registry.units())
    registry_bytes, registry_how = await registry_memory(ctx, settings, folder)
    # The run's generator when there is one, so that its expected() stays the whole read model's figure.
    generator = ctx.generator or Generator(registry, config.seed + SEED_OFFSET)
    expected_before = generator.expected()

    # A generous timeout: one of the worker's apply scripts can hold Redis for seconds under this load.
    redis = aioredis.from_url(settings.redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        max_request_size=16 * MB,
    )
    await producer.start()
    samples: list[dict[str, Any]] = []
    try:
        feed = Feed(producer, settings.scan_topic, generator, len(await producer.partitions_for(settings.scan_topic)))
        start_counts = await folded(redis, prefix)
        start_memory = await used_memory(redis)
        started = time.monotonic()

        async def processed() -> int:
            now = await folded(redis, prefix)
            return sum(now[k] - start_counts[k] for k in COUNTED)

        async def sample() -> int:
            done = await processed()
            info = await patiently(lambda: redis.info("memory"))
            samples.append(
                {
                    "t": round(time.monotonic() - started, 2),
                    "events_folded": done,
                    "events_sent": feed.sent,
                    "used_memory": int(info["used_memory"]),
                    "used_memory_rss": int(info["used_memory_rss"]),
                }
            )
            ctx.progress("memory: events folded", done, total)
            return done

        async def sampler(every: float) -> None:
            while True:
                await asyncio.sleep(every)
                await sample()

        sampling = asyncio.create_task(sampler(0.5 if config.quick else 3.0))
        try:
            await feed.publish(total, processed)
            ctx.progress("memory: all events published; waiting for the workers", feed.sent, total)
            done, last_change, last = 0, time.monotonic(), -1
            while done < feed.sent and time.monotonic() - last_change < STALL_SECONDS:
                await asyncio.sleep(0.2)
                done = await processed()
                if done != last:
                    last, last_change = done, time.monotonic()
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        await sample()
        end_counts = await folded(redis, prefix)
        end_info = await redis.info("memory")
        ctx.progress("memory: measuring the dedup memory", 0, 1)
        dedup = await dedup_memory(redis, prefix)
        dedup["key_per_event_bytes"] = await key_per_event_bytes(redis, prefix)
        ctx.progress("memory: measuring the correction ledger", 0, 1)
        ledger = await ledger_memory(redis, prefix)
        keyspace = await redis.info("keyspace")
        expected = generator.expected()
        check = await check_exact(redis, prefix, registry, expected)
    finally:
        with contextlib.suppress(TimeoutError):  # stop() waits for every ack, however long
            await asyncio.wait_for(producer.stop(), ACK_TIMEOUT_SECONDS)
        await redis.aclose()

    sent = feed.sent
    delta = {k: end_counts[k] - start_counts[k] for k in COUNTED}
    want = {k: expected[k] - expected_before[k] for k in ("events_distinct", "duplicates_sent")}
    exact = (
        check.ok
        and delta[names.stat.EVENTS_APPLIED] == want["events_distinct"]
        and delta[names.stat.EVENTS_DUPLICATE] == want["duplicates_sent"]
        and delta[names.stat.EVENTS_UNKNOWN_LOCATION] == 0
    )
    applied = delta[names.stat.EVENTS_APPLIED]
    end_memory = int(end_info["used_memory"])
    window = settings.dedup_window_seconds
    result = Result("memory", exact=exact)
    result.figures = _figures(
        end_memory, start_memory, applied, units, registry_bytes, registry_how, dedup, window, sent, total
    ) + _ledger_figures(ledger, dedup, settings.correction_window_days)
    result.samples = {
        "memory_over_time": samples,
        "events_sent": sent,
        "records_unacknowledged": feed.unacked,
        "counts_delta": delta,
        "expected_delta": want,
        "exactness": check.as_sample(),
        "used_memory_start": start_memory,
        "info_memory_end": {k: end_info.get(k) for k in INFO_FIELDS},
        "keyspace_end": keyspace,
        "registry_units": units,
        "registry_memory_bytes": registry_bytes,
        "registry_memory_measured_by": registry_how,
        "dedup": dedup,
        "dedup_window_seconds": window,
        "ledger": ledger,
        "correction_window_days": settings.correction_window_days,
    }
    return result


class Feed:
    """Publishes generator events in ingest's format, never more than MAX_BACKLOG ahead of the workers."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, generator: Generator, partitions: int) -> None:
        self.producer, self.topic, self.generator = producer, topic, generator
        self.partition_of = Partitioner(partitions)
        self.headers = [(names.HEADER_SCHEMA, names.SCHEMA_BATCH_V1.encode())]
        self.sent = 0
        self.unacked = 0  # records whose ack never came (the worker's counts still show whether they arrived)

    async def publish(self, total: int, processed: Callable[[], Awaitable[int]]) -> None:
        done = 0
        pending: list[asyncio.Future[Any]] = []
        while self.sent < total:
            if self.sent - done >= MAX_BACKLOG:
                await self._acked(pending)
                await asyncio.sleep(0.5)
                done = await processed()
                continue
            events = self.generator.next_batch(min(BATCH, total - self.sent))
            received_at = scan.format_time(datetime.now(UTC))
            for partition, value in records_of(events, self.partition_of, received_at).items():
                pending.append(await self.producer.send(self.topic, value, partition=partition, headers=self.headers))
            self.sent += len(events)
            if len(pending) >= 400:
                await self._acked(pending)
                done = await processed()
        await self._acked(pending)

    async def _acked(self, pending: list[asyncio.Future[Any]]) -> None:
        """Wait for the broker's acks, raising a send error, but never forever: one run saw a few never come."""
        if pending:
            acked, missing = await asyncio.wait(pending, timeout=ACK_TIMEOUT_SECONDS)
            for future in acked:
                future.result()
            self.unacked += len(missing)
            pending.clear()


def _figures(
    end_memory: int,
    start_memory: int,
    applied: int,
    units: int,
    registry_bytes: int | None,
    registry_how: str,
    dedup: dict[str, Any],
    window: int,
    sent: int,
    total: int,
) -> list[Figure]:
    per_event = (end_memory - start_memory) / applied if applied else None
    # An hour's digests live until the end of that hour plus the window.
    bounded = dedup["ttl_max_s"] is not None and dedup["ttl_min_s"] > 0 and dedup["ttl_max_s"] <= window + 3600
    hours = window / 3600
    each = dedup["bytes_per_event"]
    per_gib = GIB / (each * NATIONAL_AVERAGE_RATE * 3600) if each else None
    return [
        Figure(
            "Redis used_memory after the registry and the events",
            end_memory / MB,
            "MiB",
            "reported",
            None,
            note=f"{sent:,} of {total:,} events sent in this scenario, on top of the earlier scenarios'",
        ),
        Figure(
            "registry memory per unit",
            registry_bytes / units if registry_bytes is not None else None,
            "bytes",
            "reported",
            None,
            note=f"{(registry_bytes or 0) / MB:,.1f} MiB for {units:,} units; measured by {registry_how}",
        ),
        Figure(
            "memory per event applied",
            per_event,
            "bytes",
            "reported",
            None,
            note=f"used_memory {(end_memory - start_memory) / MB:,.1f} MiB more over {applied:,} distinct events",
        ),
        Figure(
            "dedup memory per event in the window",
            each,
            "bytes",
            f"≤ {DEDUP_TARGET_BYTES}",
            each is not None and each <= DEDUP_TARGET_BYTES,
            note=f"{dedup['bytes_total'] / MB:,.1f} MiB (MEMORY USAGE of {dedup['keys']:,} keys) for "
            f"{dedup['digests']:,} digests; baseline, same server: a key per event "
            f"{dedup.get('key_per_event_bytes') or 0:,.0f} B",
        ),
        Figure(
            f"dedup: hours of the national average rate ({NATIONAL_AVERAGE_RATE:,} events/s) per GiB",
            per_gib,
            "hours",
            "reported",
            None,
            note=f"the window is {hours:g} h: {hours / per_gib if per_gib else 0:,.2f} GiB at that rate",
        ),
        Figure(
            "dedup memory bounded by the window",
            dedup["ttl_max_s"],
            "s TTL",
            f"≤ {window + 3600:,} (window + the hour)",
            bounded,
            note=f"TTL {dedup['ttl_min_s']}–{dedup['ttl_max_s']} s",
        ),
    ]


def _ledger_figures(ledger: dict[str, Any], dedup: dict[str, Any], window_days: int) -> list[Figure]:
    """What being able to withdraw costs: every event the scenario applied was accepted within the correction
    window, so each left a trace; the dedup memory of the same events is the baseline. A trace's own bytes are what
    the window's traffic multiplies; the keys' overhead is per location (and per location and day of acceptance),
    so it falls per event as each location gets more events."""
    events = dedup["digests"]
    each = ledger["bytes_total"] / events if events else None
    packed = ledger["trace_bytes"] / events if events else None
    kinds = ledger["by_kind"]
    traces = kinds[names.TRACES]
    per_location = (traces["bytes"] - ledger["trace_bytes"]) / traces["keys"] if traces["keys"] else None
    per_day = packed * NATIONAL_AVERAGE_RATE * 86_400 / GIB if packed else None
    return [
        Figure(
            "correction ledger memory per event in the window",
            each,
            "bytes",
            "reported",
            None,
            note=f"{ledger['bytes_total'] / MB:,.1f} MiB (MEMORY USAGE of {ledger['keys']:,} keys) for {events:,} "
            f"events at {traces['keys']:,} locations: traces {traces['bytes'] / MB:,.1f} MiB, day sets "
            f"{kinds[names.LEDGER_DAY]['bytes'] / MB:,.1f} MiB; baseline, same run: dedup "
            f"{dedup['bytes_per_event'] or 0:,.1f} B an event",
        ),
        Figure(
            "correction ledger: a trace's own bytes",
            packed,
            "bytes",
            "reported",
            None,
            note=f"and {per_location or 0:,.0f} B per location for its string's key",
        ),
        Figure(
            f"correction ledger's traces at the national average rate ({NATIONAL_AVERAGE_RATE:,} events/s), "
            "whole window",
            per_day * (window_days + 1) if per_day else None,
            "GiB",
            "reported",
            None,
            note=f"{per_day or 0:,.2f} GiB a day of acceptance, kept {window_days} days "
            "(LASTMILE_CORRECTION_WINDOW_DAYS) and one more, then settled into each location's floor; plus the keys' "
            "overhead per location",
        ),
    ]
