"""Turning consumed records into apply calls: decode, dead-letter what cannot be used, apply with position checks.

Exactness rests neither on Faust's commits nor on Redis keeping every write: the apply script stores offsets with the
effects, and each call carries the offsets this worker last applied, so records Redis lost are folded again first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP, EventT

from coverage_service.fold import Record, Rejected, decode_record, entry
from coverage_service.readmodel.withdrawals import Withdrawals
from coverage_service.readmodel.writer import NOTHING, Applied, ReadModelBehind, ReadModelFull, ReadModelWriter
from lastmile import logs, names, redis_client
from lastmile.scan import ScanEvent
from lastmile.settings import Settings
from lastmile.topics import Partitioner

log = logging.getLogger("lastmile.worker")
T = TypeVar("T")

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# Each worker says it is alive in Redis; `lastmile rebuild --wipe` waits for these to expire before wiping.
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_SECONDS = 3 * HEARTBEAT_SECONDS
REFOLD_FETCH_TIMEOUT_MS = 1_000
# How often the worker checks that Redis still holds what it applied (a restart from an older save loses the rest).
LOST_CHECK_SECONDS = 5.0
# How often corrections waiting for their original are decided again, and ledger days leaving the window settled.
PENDING_CHECK_SECONDS = 2.0
SETTLE_CHECK_SECONDS = 3600.0


async def retrying(what: str, action: Callable[[], Awaitable[T]]) -> T:
    """Run ``action`` until it succeeds, backing off; only cancellation (shutdown) stops it."""
    delay = RETRY_FIRST_SECONDS
    attempt = 1
    while True:
        try:
            return await action()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "retrying after error",
                extra={"action": what, "attempt": attempt, "error": logs.describe(exc), "delay": delay},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            attempt += 1


def calls(records: list[Record], max_events: int) -> list[list[Record]]:
    """The records in consecutive groups of at most ``max_events`` events, one apply call each (a record is never
    split: its offset is stored when all of it is applied; a bigger one is a call of its own; a record of
    corrections is a call of its own, decided on what the records before it made). An empty list still makes one
    call, so that its offsets are stored."""
    out: list[list[Record]] = [[]]
    size = 0
    for r in records:
        n = max(1, len(r.entries))
        if out[-1] and (size + n > max_events or r.withdrawals or out[-1][-1].withdrawals):
            out.append([])
            size = 0
        out[-1].append(r)
        size += n
    return out


class Folder:
    """Turns a batch of consumed records into one apply call, dead-lettering what cannot be used."""

    def __init__(self, settings: Settings, send_dead_letter: Callable[[bytes, bytes], Awaitable[Any]]) -> None:
        self.settings = settings
        self.redis = redis_client.connect(settings)
        self.writer = ReadModelWriter(
            self.redis,
            settings.redis_key_prefix,
            settings.dedup_window_seconds,
            settings.worker_village_cache,
            settings.correction_window_days,
        )
        self.send_dead_letter = send_dead_letter
        self.totals = {"events_applied": 0, "events_duplicate": 0, "records_replayed": 0, "dead_letters": 0}
        self._last_report = time.monotonic()
        # Set while Redis refuses writes at maxmemory (the time it began); folding resumes by itself.
        self.full_since: float | None = None
        self._partition_of = Partitioner(settings.scan_topic_partitions)
        self.withdrawals = Withdrawals(self.writer, self._partition_of, settings.lapse_window_days)
        # Per partition, when the newest record applied was accepted: the log's clock, which waiting corrections
        # are given up by (a worker far behind does not give up what its backlog may still bring).
        self.clocks: dict[str, int] = {}
        # When this worker last applied a batch (time.time()), for its readiness (worker/health.py).
        self.last_applied_s: float | None = None
        # One fold at a time: the stream's batches and the timer's repair share the writer.
        self._lock = asyncio.Lock()

    async def handle(self, events: Sequence[EventT[bytes]]) -> Applied:
        async with self._lock:
            return await self._handle(events)

    async def repair(self) -> None:
        """Fold again, from the topic, what Redis lost of partitions no record has come for since: a restart from
        an older save rolls back every partition, and a partition's next apply finds only its own loss."""
        async with self._lock:
            for ofield, last in (await self.writer.lost()).items():
                stored = (await self.writer.sync([ofield]))[ofield]
                topic, partition = names.topic_partition(ofield)
                await self._refold_after(topic, partition, stored, last + 1, applied=last)

    async def _handle(self, events: Sequence[EventT[bytes]]) -> Applied:
        records, dead = await self._records([event.message for event in events])
        # Dead letters go out before the batch is applied: once its offsets are stored they are
        # never read again. A crash in between sends them twice; each names its source offset.
        for msg, rejected in dead:
            await retrying("dead-letter publish", lambda m=msg, r=rejected: self._dead_letter(m, r))  # type: ignore[misc]

        applied = NOTHING
        for chunk in calls(records, self.settings.worker_apply_events):
            applied += await self._apply_call(chunk)
        self._account(applied, len(dead))
        self.last_applied_s = time.time()
        return applied

    async def _apply_call(self, chunk: list[Record]) -> Applied:
        if chunk and chunk[0].withdrawals:  # a record of corrections, alone in its call
            await retrying("corrections", lambda: self.withdrawals.apply(chunk[0]))
        applied = await retrying("apply batch", lambda: self._apply(chunk))
        for r in chunk:
            if r.received_ms is not None:
                self.clocks[r.offset_field] = max(self.clocks.get(r.offset_field, 0), r.received_ms)
        return applied

    async def resolve_pending(self, owned: Sequence[str]) -> None:
        """Decide again the corrections of these partitions that wait for their original (docs/corrections.md)."""
        async with self._lock:
            await self.withdrawals.resolve_pending([f for f in owned if f in self.writer.positions], self.clocks)

    async def settle(self, owned: Sequence[str]) -> None:
        """Settle the ledger days of these partitions that left the correction window, by each one's clock."""
        async with self._lock:
            await self.withdrawals.settle({f: self.clocks[f] for f in owned if f in self.clocks})

    async def _records(self, messages: Sequence[Any]) -> tuple[list[Record], list[tuple[Any, Rejected]]]:
        """The apply script's records of consumed messages (anything with topic, partition, offset, value),
        and what of them is to be dead-lettered."""
        now = datetime.now(UTC)
        decoded = [decode_record(msg.value, now=now) for msg in messages]
        codes = {e.location_code for d in decoded for e in d.events}
        unknown = await retrying("registry lookup", lambda: self.writer.unknown_locations(codes))
        records: list[Record] = []
        dead: list[tuple[Any, Rejected]] = []
        for msg, d in zip(messages, decoded, strict=True):
            refused = list(d.rejected)
            usable = []
            for e in d.events:
                why = self._unusable(e, msg.partition, unknown)
                if why is None:
                    usable.append(e)
                else:
                    raw = {"carrier": e.carrier, "event_id": e.event_id, "location_code": e.location_code}
                    refused.append(Rejected(None, why, raw))
            dead.extend((msg, r) for r in refused)
            # Every consumed record is passed on, even with nothing left to apply, so that its offset is
            # stored and a replay recognises it; its dead letters are counted with it, once.
            entries = [entry(e) for e in usable]
            records.append(
                Record(
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    entries,
                    dead_letters=len(refused),
                    received_ms=d.received_ms,
                    withdrawals=d.withdrawals,
                )
            )
        return records, dead

    def _unusable(self, event: ScanEvent, partition: int, unknown: set[str]) -> str | None:
        if event.location_code in unknown:
            return f"location_code {event.location_code} is not in the registry"
        home = self._partition_of(event.location_code)
        if home != partition:
            # Repeats are recognised within a partition: one in another partition could be counted twice.
            return (
                f"location_code {event.location_code} belongs to partition {home} of the scan topic, not {partition}:"
                " records must be keyed by location code (docs/contract.md)"
            )
        return None

    async def _apply(self, records: list[Record]) -> Applied:
        """Apply the batch; when Redis lost applied batches, fold them again from the topic first."""
        while True:
            try:
                applied = await self.writer.apply(records)
            except ReadModelBehind as exc:
                await self._refold_lost(records, exc)
                continue
            except ReadModelFull as exc:
                self._paused(exc)
                raise
            if self.full_since is not None:
                log.warning("Redis accepts writes again: folding resumed", extra={"paused_s": self._paused_for()})
                self.full_since = None
            return applied

    def _paused(self, exc: ReadModelFull) -> None:
        if self.full_since is None:
            self.full_since = time.monotonic()
            log.error(
                "Redis is at maxmemory: folding paused, nothing is lost; it resumes once memory is freed",
                extra={"error": str(exc)},
            )

    def _paused_for(self) -> float:
        return 0.0 if self.full_since is None else round(time.monotonic() - self.full_since, 1)

    async def _refold_lost(self, batch: list[Record], lost: ReadModelBehind) -> None:
        """Apply again, from the topic, what was applied before ``batch`` in ``lost``'s partition and Redis lost."""
        firsts = [r for r in batch if r.offset_field == lost.offset_field]
        first = min(r.offset for r in firsts)
        await self._refold_after(firsts[0].topic, firsts[0].partition, lost.stored, first, reason=str(lost))

    async def _refold_after(self, topic: str, partition: int, stored: int, end: int, **why: object) -> None:
        """Fold the partition's records after ``stored``, the last Redis holds (-1: none), up to ``end``."""
        log.error(
            "the read model lost applied records (Redis lost writes); folding them again from the topic",
            extra={"partition": partition, "stored": stored, **why},
        )
        await self._refold(topic, partition, None if stored < 0 else stored + 1, end)

    async def _refold(self, topic: str, partition: int, start: int | None, end: int) -> None:
        """Fold the partition's records from ``start`` (None: its beginning) up to ``end``, excluded. Their
        dead letters were sent when they were first consumed: they are counted again, not sent again."""
        tp = TopicPartition(topic, partition)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
            done = False
            while not done:
                if await consumer.position(tp) >= end:
                    break
                fetched = await consumer.getmany(tp, timeout_ms=REFOLD_FETCH_TIMEOUT_MS, max_records=500)
                messages = [m for m in fetched.get(tp, []) if m.offset < end]
                done = any(m.offset >= end - 1 for m in fetched.get(tp, []))
                for i in range(0, len(messages), self.settings.worker_batch_max):
                    records, dead = await self._records(messages[i : i + self.settings.worker_batch_max])
                    for chunk in calls(records, self.settings.worker_apply_events):
                        if chunk and chunk[0].withdrawals:
                            await self.withdrawals.apply(chunk[0])
                        self._account(await self._apply(chunk), 0)
                    self._account(NOTHING, len(dead))
        finally:
            await consumer.stop()

    async def resume_positions(self, app: faust.App, assigned: list[TP]) -> dict[TP, int]:
        """The next offset to read per partition: one past the last applied, from the read model, whose dedup
        memory of the partitions the writer reads at the same time."""
        fields = {names.offset_field(tp.topic, tp.partition): tp for tp in assigned}
        self.writer.forget(fields)
        applied = await self.writer.sync(fields)
        earliest = await app.consumer.earliest_offsets(*assigned)
        ends = await app.consumer.highwaters(*assigned)
        positions: dict[TP, int] = {}
        for ofield, tp in fields.items():
            last = applied[ofield]
            if last + 1 > ends[tp]:
                # The log ends before what was applied: the topic was recreated or truncated. Its
                # records are new, so they must not be mistaken for replays.
                log.error(
                    "partition log is shorter than the applied offset; starting it over",
                    extra={"partition": tp.partition, "applied": last, "log_end": ends[tp]},
                )
                await self.writer.forget_offset(tp.topic, tp.partition)
                last = -1
            positions[tp] = max(last + 1, earliest[tp])
        return positions

    async def _dead_letter(self, msg: Any, rejected: Rejected) -> None:
        body = {
            "reason": rejected.reason,
            "source": {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset, "index": rejected.index},
            "raw": rejected.raw,
            "dead_lettered_at": datetime.now(UTC).isoformat(),
        }
        await self.send_dead_letter(orjson.dumps(body, default=str), rejected.reason.encode()[:1000])

    def _account(self, applied: Applied, dead_letters: int) -> None:
        self.totals["events_applied"] += applied.events_applied
        self.totals["events_duplicate"] += applied.events_duplicate
        self.totals["records_replayed"] += applied.records_replayed
        self.totals["dead_letters"] += dead_letters
        if time.monotonic() - self._last_report >= 10:
            self._last_report = time.monotonic()
            log.info("folded", extra=dict(self.totals))

    async def close(self) -> None:
        await self.redis.aclose()
