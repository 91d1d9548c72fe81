"""Reading the read model back: how far the worker has got, and whether its figures are exact.

A benchmark that only counts events per second can report a fast pipeline that counts wrong, so each scenario that
drives the pipeline ends by comparing Redis with the generator's own count, never with the pipeline's code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from lastmile import backlog, names
from lastmile.names import field as hfield
from lastmile.registry import Registry

STALL_SECONDS: Final = 60.0  # no progress for this long while events are outstanding: the pipeline is stuck
BUSY_PATIENCE_SECONDS: Final = 120.0
T = TypeVar("T")


async def patiently(call: Callable[[], Awaitable[T]]) -> T:
    """Run a Redis call, waiting out a Redis that does not answer: while one long script runs (a worker's
    apply call over a big backlog), Redis serves no one else, answering BUSY after its 5 s threshold or
    letting the client's read time out, and the harness must outlast that to measure anything."""
    deadline = time.monotonic() + BUSY_PATIENCE_SECONDS
    while True:
        try:
            return await call()
        except (redis_errors.TimeoutError, redis_errors.ConnectionError):
            if time.monotonic() > deadline:
                raise
        except redis_errors.ResponseError as exc:
            if not str(exc).startswith("BUSY") or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def counters(redis: aioredis.Redis, prefix: str, wanted: list[str]) -> dict[str, int]:
    """The worker's counters under ``prefix`` (``names.stat``), summed over the shards' ``stats`` hashes."""

    async def read() -> list[Any]:
        shards = await backlog.shards(redis, prefix)
        async with redis.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.hmget(names.shard_key(prefix, shard, names.STATS), wanted)
            return list(await pipe.execute())

    replies = await patiently(read)
    return {name: sum(int(r[i] or 0) for r in replies) for i, name in enumerate(wanted)}


async def applied(redis: aioredis.Redis, prefix: str) -> int:
    """Distinct events the worker has applied under ``prefix``."""
    return (await counters(redis, prefix, [names.stat.EVENTS_APPLIED]))[names.stat.EVENTS_APPLIED]


async def wait_applied(
    redis: aioredis.Redis,
    prefix: str,
    target: int,
    *,
    progress: Callable[[int], None] | None = None,
    poll_seconds: float = 0.05,
    stall_seconds: float = STALL_SECONDS,
) -> tuple[float | None, int]:
    """Wait until ``target`` events are applied; return (monotonic time it was seen, count), time None on a stall."""
    last, last_change = -1, time.monotonic()
    while True:
        count = await applied(redis, prefix)
        now = time.monotonic()
        if progress is not None:
            progress(count)
        if count >= target:
            return now, count
        if count != last:
            last, last_change = count, now
        elif now - last_change > stall_seconds:
            return None, count
        await asyncio.sleep(poll_seconds)


@dataclass
class Exactness:
    ok: bool
    checked: int  # figures compared
    mismatches: list[str] = field(default_factory=list)  # the first few, "what: redis X, expected Y"

    def as_sample(self) -> dict[str, Any]:
        return {"ok": self.ok, "figures_checked": self.checked, "mismatches": self.mismatches[:20]}


async def check_exact(redis: aioredis.Redis, prefix: str, registry: Registry, expected: dict[str, Any]) -> Exactness:
    """Compare the read model under ``prefix`` with ``expected`` (a :meth:`Generator.expected` answer)."""
    reached: dict[str, int] = expected["villages_reached"]
    provinces = [u.code for u in registry.provinces]
    regions = [*provinces, *(u.code for u in registry.counties)]
    by_type: dict[str, int] = expected["by_type"]
    types = sorted(by_type)

    async def read() -> list[Any]:
        async with redis.pipeline(transaction=False) as pipe:
            for code in regions:
                pipe.hget(names.key(prefix, names.REGION, code), hfield.VILLAGES_REACHED)
            for code in provinces:
                pipe.hmget(names.key(prefix, names.REGION, code), [hfield.TYPE + t for t in types])
            return list(await pipe.execute())

    applied_now = await applied(redis, prefix)
    answers = await patiently(read)
    mismatches: list[str] = []

    def compare(what: str, got: Any, want: int) -> None:
        if int(got or 0) != want:
            mismatches.append(f"{what}: redis {int(got or 0)}, expected {want}")

    compare("events_applied", applied_now, expected["events_distinct"])
    per_region = dict(zip(regions, answers[: len(regions)], strict=True))
    # The nation's figures are its provinces' summed (the read model keeps no hash for it).
    compare(
        f"villages_reached {names.NATIONAL}",
        sum(int(per_region[p] or 0) for p in provinces),
        reached.get(names.NATIONAL, 0),
    )
    for code, got in per_region.items():
        compare(f"villages_reached {code}", got, reached.get(code, 0))
    by_province = answers[len(regions) :]
    for i, t in enumerate(types):
        compare(f"CN {hfield.TYPE}{t}", sum(int(p[i] or 0) for p in by_province), by_type[t])
    return Exactness(not mismatches, 2 + len(regions) + len(types), mismatches)


async def forget_prefix(redis: aioredis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (a scratch read model); returns how many."""
    return await patiently(lambda: _forget(redis, prefix))


async def _forget(redis: aioredis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[Any] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            deleted += await redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted
