"""Back-pressure: the backlog of records published but not yet folded, watched each second; past the bound
(LASTMILE_INGEST_MAX_BACKLOG_RECORDS) POST /v1/scans answers 503 with Retry-After, so a stalled worker or a full Redis
cannot turn into an unbounded topic of events that are acknowledged but not counted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import redis.asyncio as aioredis

from lastmile import backlog, logs
from lastmile.broker import Broker
from lastmile.settings import Settings

log = logging.getLogger("lastmile.ingest.backpressure")

CHECK_SECONDS: Final = 1.0
STOP_TIMEOUT_SECONDS: Final = 5.0


class Backpressure:
    def __init__(self, settings: Settings, redis: aioredis.Redis, broker: Broker) -> None:
        self.settings = settings
        self.redis = redis
        self.broker = broker
        self.records: int | None = None  # None: not measured (the broker or Redis did not answer)
        self.memory: backlog.Memory | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, STOP_TIMEOUT_SECONDS)

    async def measure(self) -> None:
        try:
            ends = await self.broker.end_offsets(self.settings.scan_topic)
            applied = await backlog.applied_offsets(self.redis, self.settings.redis_key_prefix)
            self.memory = await backlog.memory(self.redis)
        except Exception as exc:
            # Unknown is not full: publishing is ingest's promise, and the broker answers for that itself.
            self.records = None
            log.debug("backlog not measured", extra={"error": logs.describe(exc)})
            return
        was = self.refusal
        self.records = backlog.records_behind(self.settings.scan_topic, ends, applied)
        now = self.refusal
        if now and not was:
            log.error("refusing posts: %s", now, extra={"memory_full": bool(self.memory and self.memory.full)})
        elif was and not now:
            log.warning("accepting posts again", extra={"backlog_records": self.records})

    async def _watch(self) -> None:
        while True:
            await self.measure()
            await asyncio.sleep(CHECK_SECONDS)

    @property
    def refusal(self) -> str | None:
        """Why posts are refused now, or None."""
        bound = self.settings.ingest_max_backlog_records
        if not bound or self.records is None or self.records <= bound:
            return None
        why = f"{self.records:,} records are published but not yet counted (bound {bound:,})"
        if self.memory is not None and self.memory.full:
            why += "; " + self.memory.describe()
        return why + ": try again later"
