"""`lastmile rebuild`: fold the scan topic from its beginning into the read model, outside the worker.

The topic is the system of record (kept forever), so the read model can always be made again from it: after Redis
lost its data, after a restore, or to check the live figures. What it does, ``--wipe`` too, is on docs/operations.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from coverage_service.fold import Record, cst_day, decode_record, entry
from coverage_service.readmodel.registry_store import load_registry, registry_loaded
from coverage_service.readmodel.withdrawals import Withdrawals
from coverage_service.readmodel.writer import ReadModelWriter
from coverage_service.worker.folder import HEARTBEAT_TTL_SECONDS, calls
from lastmile import names, redis_client
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile.topics import Partitioner

FETCH_TIMEOUT_MS = 1_000
DELETE_CHUNK = 1_000


class RebuildError(RuntimeError):
    """The rebuild cannot start (workers running, no registry to load); nothing was changed."""


@dataclass
class RebuildReport:
    partitions: int = 0
    records: int = 0
    records_replayed: int = 0
    events_applied: int = 0
    events_duplicate: int = 0
    events_unknown_location: int = 0
    events_invalid: int = 0
    keys_deleted: int = 0
    seconds: float = 0.0
    end_offsets: dict[int, int] = field(default_factory=dict)


async def rebuild(
    settings: Settings,
    *,
    registry_dir: Path | None,
    wipe: bool,
    progress: Callable[[int, int], None] | None = None,
) -> RebuildReport:
    """Fold the scan topic, from the start, up to its end when the rebuild began; return what it did."""
    started = time.perf_counter()
    report = RebuildReport()
    redis = redis_client.connect(settings)
    try:
        if wipe:
            await _refuse_if_workers_run(redis, settings)
            if registry_dir is None:
                raise RebuildError("--wipe deletes the registry with the figures: give --registry DIR to load again")
            registry = read_registry(registry_dir)  # checked whole before anything is deleted
            report.keys_deleted = await wipe_read_model(redis, settings.redis_key_prefix)
            await load_registry(redis, settings.redis_key_prefix, registry, population_tiers=settings.population_tiers)
        elif not await registry_loaded(redis, settings.redis_key_prefix):
            if registry_dir is None:
                raise RebuildError("no registry in Redis: give --registry DIR to load it first")
            await load_registry(
                redis,
                settings.redis_key_prefix,
                read_registry(registry_dir),
                population_tiers=settings.population_tiers,
            )
        writer = ReadModelWriter(
            redis,
            settings.redis_key_prefix,
            settings.dedup_window_seconds,
            settings.worker_village_cache,
            settings.correction_window_days,
        )
        await _fold_topic(settings, writer, report, progress)
    finally:
        await redis.aclose()
    report.seconds = time.perf_counter() - started
    return report


async def wipe_read_model(redis: aioredis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` but the history snapshots; return how many were deleted."""
    # The registry goes too: its denominators live in the region hashes. The history stays: snapshots are
    # dated records, not derived from the topic.
    keep = (names.key(prefix, names.HISTORY), names.key(prefix, names.HISTORY_DAYS))
    deleted = 0
    batch: list[str] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=DELETE_CHUNK):
        if not str(key).startswith(keep):
            batch.append(key)
        if len(batch) >= DELETE_CHUNK:
            deleted += await redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted


async def _refuse_if_workers_run(redis: aioredis.Redis, settings: Settings) -> None:
    """Refuse while any worker's heartbeat is in Redis; one that was just stopped is given its heartbeat's
    lifetime to expire. (The broker's group membership is not used: the embedded broker keeps a stopped
    member listed.) A live worker keeps its own position and would apply later records first, and the
    rebuild would take the earlier ones for replays."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEARTBEAT_TTL_SECONDS + 1
    pattern = names.key(settings.redis_key_prefix, names.WORKER_HEARTBEAT, "*")
    while True:
        alive = [key async for key in redis.scan_iter(match=pattern)]
        if not alive:
            return
        if loop.time() >= deadline:
            raise RebuildError(
                f"{len(alive)} worker(s) are running (heartbeats under {pattern}): "
                "stop them before `lastmile rebuild --wipe`"
            )
        await asyncio.sleep(0.5)


async def _fold_topic(
    settings: Settings,
    writer: ReadModelWriter,
    report: RebuildReport,
    progress: Callable[[int, int], None] | None,
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    withdrawals = Withdrawals(writer, Partitioner(settings.scan_topic_partitions), settings.lapse_window_days)
    # When the newest record folded was accepted, per partition and over all; and the day settled up to.
    clocks: dict[str, int] = {}
    clock, settled_on = 0, 0
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = consumer.partitions_for_topic(settings.scan_topic)
        if not partitions:
            raise RebuildError(f"topic {settings.scan_topic!r} does not exist")
        tps = [TopicPartition(settings.scan_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        beginnings = await consumer.beginning_offsets(tps)
        applied = await writer.applied_offsets()
        todo: dict[TopicPartition, int] = {}  # partition -> the end offset to fold up to
        total = 0
        for tp in tps:
            last = applied.get(names.offset_field(tp.topic, tp.partition))
            start = beginnings[tp] if last is None else max(last + 1, beginnings[tp])
            if start < ends[tp]:
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
                total += ends[tp] - start
            else:
                consumer.pause(tp)
        report.partitions = len(tps)
        report.end_offsets = {tp.partition: ends[tp] for tp in tps}
        done = 0
        if progress is not None:
            progress(0, total)
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=FETCH_TIMEOUT_MS, max_records=2_000)
            now = datetime.now(UTC)
            records: list[Record] = []
            for tp, messages in fetched.items():
                for msg in messages:
                    if msg.offset >= todo.get(tp, -1):
                        continue  # written after the rebuild began: the worker's, not ours
                    decoded = decode_record(msg.value, now=now)
                    # Counted, not republished: the worker dead-lettered them when it first met them.
                    report.events_invalid += len(decoded.rejected)
                    entries = [entry(e) for e in decoded.events]
                    records.append(
                        Record(
                            tp.topic,
                            tp.partition,
                            msg.offset,
                            entries,
                            received_ms=decoded.received_ms,
                            withdrawals=decoded.withdrawals,
                        )
                    )
                last = messages[-1].offset if messages else None
                if last is not None and last + 1 >= todo[tp]:
                    del todo[tp]
                    consumer.pause(tp)
            # The worker's own fold and apply script, with partitions and offsets: the stored offsets keep the
            # rebuild exactly-once, whether it is run again or a worker takes over afterwards.
            for chunk in calls(records, settings.worker_apply_events):
                if chunk and chunk[0].withdrawals:
                    await withdrawals.apply(chunk[0])
                result = await writer.apply(chunk)
                for r in chunk:
                    if r.received_ms is not None:
                        clocks[r.offset_field] = max(clocks.get(r.offset_field, 0), r.received_ms)
                        clock = max(clock, r.received_ms)
                # As the worker did, by the log's own clock: corrections waiting for an event applied since are
                # decided, and days past the window settled.
                await withdrawals.resolve_pending(clocks=clocks)
                if cst_day(clock) > settled_on:
                    await withdrawals.settle(clocks)
                    settled_on = cst_day(clock)
                report.events_applied += result.events_applied
                report.events_duplicate += result.events_duplicate
                report.events_unknown_location += result.events_unknown_location
                report.records_replayed += result.records_replayed
                report.records += len(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        # Corrections that came before their original, decided once the whole log is folded; then the ledger
        # days the log's age put past the correction window.
        await withdrawals.resolve_pending()
        wall = int(time.time() * 1000)
        await withdrawals.settle({names.offset_field(tp.topic, tp.partition): wall for tp in tps})
    finally:
        await consumer.stop()
