"""The Faust stream worker: scan topic in, read model out.

Faust acks an event when the agent moves past it and drops any event whose handling raised, so the
agent never raises: Redis and broker errors are retried in place until they succeed, which holds the
partition back instead of losing data. Exactness does not rest on Faust's commits (at least once):
the apply script stores each partition's offset with the effects of its records and skips replays.

Nor does it rest on Redis keeping every write: with ``appendfsync everysec`` a crash of its machine loses up
to a second of applied batches, offsets included, while this worker has moved past them. Each apply call
therefore carries, per partition, the offset this worker last applied there (a position check, see
apply.lua); when Redis holds less, the worker folds the lost records again from the topic, then goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import faust
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP, EventT

from coverage_service import history
from coverage_service.fold import Record, Rejected, decode_record, entry
from coverage_service.store import Applied, ReadModelBehind, ReadModelWriter
from lastmile import logs, names
from lastmile.settings import Settings

log = logging.getLogger("lastmile.worker")
T = TypeVar("T")

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# Each worker says it is alive in Redis; `lastmile rebuild --wipe` waits for these to expire before wiping.
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_SECONDS = 3 * HEARTBEAT_SECONDS
REFOLD_FETCH_TIMEOUT_MS = 1_000


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


class Folder:
    """Turns a batch of consumed records into one apply call, dead-lettering what cannot be used."""

    def __init__(self, settings: Settings, send_dead_letter: Callable[[bytes, bytes], Awaitable[Any]]) -> None:
        self.settings = settings
        self.redis = aioredis.from_url(settings.redis_url, decode_responses=True)
        self.writer = ReadModelWriter(self.redis, settings.redis_key_prefix, settings.dedup_window_seconds)
        self.send_dead_letter = send_dead_letter
        self.totals = {"events_applied": 0, "events_duplicate": 0, "records_replayed": 0, "dead_letters": 0}
        self._last_report = time.monotonic()
        # Per partition (offset field): the last offset this worker applied, or found applied when it was
        # assigned the partition. Redis must hold at least this; less means it lost applied batches.
        self.positions: dict[str, int] = {}

    async def handle(self, events: Sequence[EventT[bytes]]) -> Applied:
        records, dead = await self._records([event.message for event in events])
        # Dead letters go out before the batch is applied: once its offsets are stored they are
        # never read again. A crash in between sends them twice; each names its source offset.
        for msg, rejected in dead:
            await retrying("dead-letter publish", lambda m=msg, r=rejected: self._dead_letter(m, r))  # type: ignore[misc]

        applied = await retrying("apply batch", lambda: self._apply(records))
        self._account(applied, len(dead))
        return applied

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
            refused += [
                Rejected(
                    None,
                    f"location_code {e.location_code} is not in the registry",
                    {"seen_id": f"{e.carrier}:{e.event_id}", "location_code": e.location_code},
                )
                for e in d.events
                if e.location_code in unknown
            ]
            dead.extend((msg, r) for r in refused)
            # Every consumed record is passed on, even with nothing left to apply, so that its offset is
            # stored and a replay recognises it; its dead letters are counted with it, once.
            entries = [entry(e) for e in d.events]
            records.append(Record(msg.topic, msg.partition, msg.offset, entries, dead_letters=len(refused)))
        return records, dead

    async def _apply(self, records: list[Record]) -> Applied:
        """Apply the batch; when Redis lost applied batches, fold them again from the topic first."""
        while True:
            try:
                return await self._apply_checked(records)
            except ReadModelBehind as exc:
                await self._refold_lost(records, str(exc))

    async def _apply_checked(self, records: list[Record]) -> Applied:
        """One apply call with a position check per partition of the batch this worker applied before."""
        fields = {names.offset_field(r.topic, r.partition) for r in records}
        expect = {f: self.positions[f] for f in fields if f in self.positions}
        applied = await self.writer.apply(records, expect)
        for r in records:
            ofield = names.offset_field(r.topic, r.partition)
            self.positions[ofield] = max(self.positions.get(ofield, -1), r.offset)
        return applied

    async def _refold_lost(self, batch: list[Record], reason: str) -> None:
        """Apply again, from the topic, what this worker had applied before ``batch`` and Redis lost."""
        stored = await self.writer.applied_offsets()
        firsts: dict[tuple[str, int], int] = {}
        for r in batch:
            firsts[(r.topic, r.partition)] = min(firsts.get((r.topic, r.partition), r.offset), r.offset)
        for (topic, partition), first in sorted(firsts.items()):
            ofield = names.offset_field(topic, partition)
            last = stored.get(ofield)
            if ofield not in self.positions or (last is not None and last >= self.positions[ofield]):
                continue
            log.error(
                "the read model lost applied records (Redis lost writes); folding them again from the topic",
                extra={"partition": partition, "stored": last, "applied": self.positions[ofield], "reason": reason},
            )
            if last is None:
                del self.positions[ofield]
            else:
                self.positions[ofield] = last
            await self._refold(topic, partition, None if last is None else last + 1, first)

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
                    self._account(await self._apply_checked(records), len(dead))
        finally:
            await consumer.stop()

    async def resume_positions(self, app: faust.App, assigned: list[TP]) -> dict[TP, int]:
        """The next offset to read per partition: one past the last applied, from the read model."""
        applied = await self.writer.applied_offsets()
        earliest = await app.consumer.earliest_offsets(*assigned)
        ends = await app.consumer.highwaters(*assigned)
        positions: dict[TP, int] = {}
        held: dict[str, int] = {}  # what Redis holds now is what it must go on holding: the position checks' base
        for tp in assigned:
            ofield = names.offset_field(tp.topic, tp.partition)
            last = applied.get(ofield)
            if last is not None and last + 1 > ends[tp]:
                # The log ends before what was applied: the topic was recreated or truncated. Its
                # records are new, so they must not be mistaken for replays.
                log.error(
                    "partition log is shorter than the applied offset; starting it over",
                    extra={"partition": tp.partition, "applied": last, "log_end": ends[tp]},
                )
                await self.writer.forget_offset(tp.topic, tp.partition)
                last = None
            if last is not None:
                held[ofield] = last
            positions[tp] = earliest[tp] if last is None else max(last + 1, earliest[tp])
        self.positions = held
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


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=True,
        topic_partitions=settings.scan_topic_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        producer_acks=-1,
        broker_session_timeout=settings.worker_session_timeout_seconds,
        broker_rebalance_timeout=settings.worker_session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.worker_session_timeout_seconds / 4),
        producer_enable_idempotence=settings.kafka_enable_idempotence,
    )
    scans = app.topic(settings.scan_topic, key_serializer="raw", value_serializer="raw", internal=False)

    async def send_dead_letter(value: bytes, reason: bytes) -> None:
        await app.producer.send_and_wait(
            settings.dead_letter_topic, None, value, None, None, [(names.HEADER_DEAD_LETTER_REASON, reason)]
        )

    folder = Folder(settings, send_dead_letter)
    app.folder = folder  # type: ignore[attr-defined]

    @app.on_rebalance_complete.connect  # type: ignore[arg-type, misc, untyped-decorator, unused-ignore]
    async def resume_from_read_model(sender: faust.App, **_: Any) -> None:
        # Faust seeks each assigned partition to its committed offset right after this signal. The
        # read model, not Kafka, knows what was applied (Redis may have lost its last second of AOF,
        # or been restored or wiped), so commit its positions first and resume exactly there.
        assigned = sorted(tp for tp in sender.consumer.assignment() if tp.topic == settings.scan_topic)
        if assigned:
            positions = await retrying("resume positions", lambda: folder.resume_positions(sender, assigned))
            # Faust has no public call that commits given offsets; its consumer's own _commit does.
            await sender.consumer._commit(positions)  # type: ignore[attr-defined]
            # Seek too: aiokafka's seek_to_committed, which Faust calls next, skips offset 0.
            for tp, offset in positions.items():
                await sender.consumer.seek(tp, offset)
            log.info(
                "resuming from the read model",
                extra={"positions": {str(tp.partition): o for tp, o in positions.items()}},
            )

    @app.agent(scans, name="fold-scans", concurrency=1)
    async def fold_scans(stream: faust.StreamT[bytes]) -> None:
        # take_events (unlike take) hands over the Kafka messages, whose partition and offset the
        # apply script needs; it acks them once the loop body has returned.
        batches = stream.take_events(settings.worker_batch_max, within=settings.worker_batch_within_seconds)  # type: ignore[attr-defined]
        async for batch in batches:
            await folder.handle(batch)

    history.check_hour(settings.snapshot_hour)  # a bad SNAPSHOT_HOUR stops the worker at start

    @app.timer(interval=history.CHECK_INTERVAL_S)  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def daily_snapshot() -> None:
        # Every worker looks at the clock each minute; taking a day's snapshot is idempotent, so which
        # worker takes it, or whether two do at once, does not matter. A timer that raised would stop.
        try:
            await history.take_if_due(folder.redis, settings, datetime.now(UTC))
        except Exception as exc:
            log.warning("history snapshot failed; trying again in a minute", extra={"error": logs.describe(exc)})

    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    heartbeat_key = names.key(settings.redis_key_prefix, names.WORKER_HEARTBEAT, worker_id)

    @app.task  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def heartbeat() -> None:
        # A task, not a timer: the first beat goes out as the worker starts, before it folds anything.
        while True:
            body = orjson.dumps({"worker": worker_id, "group": settings.consumer_group, **folder.totals})
            try:
                await folder.redis.set(heartbeat_key, body, ex=int(HEARTBEAT_TTL_SECONDS))
            except Exception as exc:
                log.warning("heartbeat failed", extra={"error": logs.describe(exc)})
            await asyncio.sleep(HEARTBEAT_SECONDS)

    return app


def run(settings: Settings) -> None:
    """Run a worker in this process until SIGTERM / Ctrl-C."""
    logs.configure("worker", settings.log_level, settings.log_format)
    from lastmile.topics import ensure_topics

    # Faust runs on the thread's current loop; create the topics on that same loop first.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    app = create_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logs.dict_config("worker", settings.log_level, settings.log_format),
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
