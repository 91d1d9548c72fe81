"""Whether the read model is behind the scans accepted: records wait on the topic and no batch was applied lately.

One watcher per app checks every second; every coverage document carries its verdict as ``stale``, and /metrics as
``lastmile_read_model_stale`` (docs/reading-coverage.md, "Freshness").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

import redis.asyncio as aioredis

from coverage_service.readmodel import queries
from lastmile import backlog, logs
from lastmile.broker import Broker
from lastmile.names import stat

log = logging.getLogger("lastmile.coverage.freshness")

CHECK_EVERY_S: Final = 1.0


def is_stale(waiting: int, applied_ms: int | None, waiting_since_ms: int, now_ms: int, after_s: float) -> bool:
    """:func:`lastmile.backlog.stalled` in the read model's milliseconds: a scan after a quiet night is not late."""
    applied_s = None if applied_ms is None else applied_ms / 1000
    return backlog.stalled(waiting, applied_s, waiting_since_ms / 1000, now_ms / 1000, after_s)


class Watcher:
    """Keeps :attr:`stale` current. The topic's end offsets only grow, so while the broker is unreachable the last
    ones known still give a lower bound of what waits."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        broker: Broker,
        topic: str,
        after_s: float,
        every_s: float = CHECK_EVERY_S,
    ) -> None:
        self.redis, self.prefix, self.broker, self.topic = redis, prefix, broker, topic
        self.after_s, self.every_s = after_s, every_s
        self.stale = False
        self._ends: dict[int, int] | None = None
        self._waiting = backlog.WaitingSince()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def check(self) -> None:
        """Check once (a progress read, and the topic's end offsets if the broker answers) and keep the result."""
        progress = await queries.progress(self.redis, self.prefix)
        try:
            self._ends = await self.broker.end_offsets(self.topic)
        except Exception as exc:
            log.debug("freshness: broker: %s", logs.describe(exc))
        applied_ms = progress["stats"].get(stat.APPLIED_AT_MS)
        waiting = None if self._ends is None else backlog.records_behind(self.topic, self._ends, progress["offsets"])
        now_ms = int(time.time() * 1000)
        since = self._waiting.seen(waiting or 0, now_ms)
        stale = since is not None and is_stale(waiting or 0, applied_ms, int(since), now_ms, self.after_s)
        if stale != self.stale:
            log.warning("read model %s", "stale: records wait and none was applied lately" if stale else "caught up")
        self.stale = stale

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stopping = True  # a client library that swallows the cancellation still lets the loop end
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.check()
            except Exception as exc:  # Redis down: the documents cannot be read either; keep the last verdict
                log.debug("freshness: %s", logs.describe(exc))
            await asyncio.sleep(self.every_s)
