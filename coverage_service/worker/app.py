"""The Faust stream worker: scan topic in, read model out.

Beside the fold it takes the daily history snapshot and keeps a heartbeat in Redis (which ``lastmile rebuild --wipe``
checks). What it guarantees is on docs/guarantees.md.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import orjson

from coverage_service.readmodel import history
from coverage_service.worker.folder import (
    HEARTBEAT_SECONDS,
    HEARTBEAT_TTL_SECONDS,
    LOST_CHECK_SECONDS,
    PENDING_CHECK_SECONDS,
    SETTLE_CHECK_SECONDS,
    Folder,
    retrying,
)
from coverage_service.worker.health import Health, State
from lastmile import logs, names
from lastmile.settings import Settings
from lastmile.topics import ensure_topics

log = logging.getLogger("lastmile.worker")


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        store="memory://",
        # Faust makes a folder for table state even with the memory store; not in the working directory.
        datadir=str(Path(tempfile.gettempdir()) / "lastmile-faust-{conf.id}-data"),
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
        # apply script needs; it acks them once the loop body has returned. The agent never raises: Faust
        # drops an event whose handling raised, so the folder retries Redis and broker errors in place
        # (folder.retrying), holding the partition back instead of losing data.
        batches = stream.take_events(settings.worker_batch_max, within=settings.worker_batch_within_seconds)  # type: ignore[attr-defined]
        async for batch in batches:
            started = time.perf_counter()
            await folder.handle(batch)
            health.fold_seconds.observe(time.perf_counter() - started)

    history.check_hour(settings.snapshot_hour)  # a bad LASTMILE_SNAPSHOT_HOUR stops the worker at start

    @app.timer(interval=history.CHECK_INTERVAL_S)  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def daily_snapshot() -> None:
        # Every worker looks at the clock each minute; taking a day's snapshot is idempotent, so which
        # worker takes it, or whether two do at once, does not matter. A timer that raised would stop.
        try:
            await history.take_if_due(folder.redis, settings, datetime.now(UTC))
        except Exception as exc:
            log.warning("history snapshot failed; trying again in a minute", extra={"error": logs.describe(exc)})

    @app.timer(interval=LOST_CHECK_SECONDS)  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def repair_lost() -> None:
        try:
            await folder.repair()
        except Exception as exc:
            log.warning("checking for lost records failed; trying again", extra={"error": logs.describe(exc)})

    @app.timer(interval=PENDING_CHECK_SECONDS)  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def corrections_waiting() -> None:
        # A correction that came before its original is decided again once the original is applied; only by
        # the worker holding its partition, which alone writes that partition's locations.
        owned = [names.offset_field(tp.topic, tp.partition) for tp in app.consumer.assignment()]
        try:
            await folder.resolve_pending(owned)
        except Exception as exc:
            log.warning("deciding waiting corrections failed; trying again", extra={"error": logs.describe(exc)})

    @app.timer(interval=SETTLE_CHECK_SECONDS)  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def settle_ledgers() -> None:
        # Events leave the correction window daily; each worker settles its own partitions' days.
        owned = [names.offset_field(tp.topic, tp.partition) for tp in app.consumer.assignment()]
        try:
            await folder.settle(owned)
        except Exception as exc:
            log.warning("settling the correction ledgers failed; trying again", extra={"error": logs.describe(exc)})

    def state() -> State:
        try:
            assigned = sorted(tp for tp in app.consumer.assignment() if tp.topic == settings.scan_topic)
        except Exception:  # not started, or between assignments
            return State(0, {}, folder.last_applied_s, dict(folder.totals))
        behind: dict[int, int] = {}
        for tp in assigned:
            applied = folder.writer.positions.get(names.offset_field(tp.topic, tp.partition))
            high = app.consumer.highwater(tp)
            if applied is not None and high is not None:
                behind[tp.partition] = max(0, int(high) - (min(applied.values(), default=-1) + 1))
        return State(len(assigned), behind, folder.last_applied_s, dict(folder.totals))

    health = Health(settings, state)

    @app.task  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def serve_health() -> None:
        await health.start()

    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    heartbeat_key = names.key(settings.redis_key_prefix, names.WORKER_HEARTBEAT, worker_id)

    # The lock orders the last beat before the goodbye, so no beat lands after the key was deleted.
    beating = asyncio.Lock()
    stopping = False

    @app.task  # type: ignore[misc, untyped-decorator, unused-ignore]
    async def heartbeat() -> None:
        # A task, not a timer: the first beat goes out as the worker starts, before it folds anything.
        while True:
            async with beating:
                if stopping:
                    return
                body = orjson.dumps({"worker": worker_id, "group": settings.consumer_group, **folder.totals})
                try:
                    await folder.redis.set(heartbeat_key, body, ex=int(HEARTBEAT_TTL_SECONDS))
                except Exception as exc:
                    log.warning("heartbeat failed", extra={"error": logs.describe(exc)})
            await asyncio.sleep(HEARTBEAT_SECONDS)

    @app.on_before_shutdown.connect  # type: ignore[arg-type, misc, untyped-decorator, unused-ignore]
    async def say_goodbye(sender: faust.App, **_: Any) -> None:
        # A clean stop (the consumer has just left) takes its heartbeat with it, so `lastmile rebuild --wipe`
        # can start at once; a killed worker's heartbeat still expires after its TTL.
        nonlocal stopping
        await health.stop()
        async with beating:
            stopping = True
            try:
                await folder.redis.delete(heartbeat_key)
            except Exception as exc:
                log.warning("removing the heartbeat failed; it expires by itself", extra={"error": logs.describe(exc)})

    return app


def run(settings: Settings) -> None:
    """Run a worker in this process until SIGTERM / Ctrl-C."""
    logs.configure("worker", settings.log_level, settings.log_format)
    log.info("starting", extra=settings.describe())
    # Faust runs on the thread's current loop; create the topics on that same loop first.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    app = create_app(settings)
    _tune_gc()
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logs.dict_config("worker", settings.log_level, settings.log_format),
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()


# An apply call's temporaries (entries, locations, writes: some ten objects per event) live for the whole call;
# at the default thresholds they outlive young collections, and each full collection then walks every object the
# worker holds (its village memory, the registry's word on its codes); docs/performance.md has the measurement.
# Young collections after this many allocations let a call's temporaries die young.
GC_YOUNG_THRESHOLD = 200_000


def _tune_gc() -> None:
    gc.freeze()  # what start-up made lives as long as the process: no collection walks it again
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 50)
