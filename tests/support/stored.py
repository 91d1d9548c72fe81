"""The read model's write-path keys as stored, read and written straight from Redis for tests: per-shard offsets and
counters, and the nation's figures summed from its provinces, independently of the readers under test."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from lastmile import names


async def set_kinds(redis: aioredis.Redis, prefix: str, kinds: Mapping[str, str]) -> None:
    """Write unit kinds into the registry index, each in its province's part."""
    by_shard: dict[str, dict[str, str]] = {}
    for code, kind in kinds.items():
        by_shard.setdefault(code[:2], {})[code] = kind
    for shard, part in by_shard.items():
        await redis.hset(names.shard_key(prefix, shard, names.REG_KIND), mapping=part)


async def all_kinds(redis: aioredis.Redis, prefix: str) -> dict[str, str]:
    """Every unit's kind in the registry index, over every province's part."""
    out: dict[str, str] = {}
    async for key in redis.scan_iter(match=names.pattern(prefix, names.REG_KIND)):
        out.update(await redis.hgetall(key))
    return out


async def shards(redis: aioredis.Redis, prefix: str) -> list[str]:
    return sorted(await redis.smembers(names.key(prefix, names.REG_CHILDREN, names.NATIONAL)))


async def offsets_by_shard(redis: aioredis.Redis, prefix: str) -> dict[str, dict[str, int]]:
    return {
        s: {f: int(v) for f, v in (await redis.hgetall(names.shard_key(prefix, s, names.OFFSETS))).items()}
        for s in await shards(redis, prefix)
    }


async def offsets(redis: aioredis.Redis, prefix: str) -> dict[str, int]:
    """Offset field -> the offset stored in every shard; an AssertionError if the shards differ."""
    by_shard = list((await offsets_by_shard(redis, prefix)).values())
    assert all(o == by_shard[0] for o in by_shard), by_shard
    return by_shard[0] if by_shard else {}


async def lowest_offsets(redis: aioredis.Redis, prefix: str) -> dict[str, int]:
    """Offset field -> the lowest offset of the shards' (-1 where a shard has none): applied everywhere up to it."""
    by_shard = list((await offsets_by_shard(redis, prefix)).values())
    fields = {f for o in by_shard for f in o}
    return {f: min(o.get(f, -1) for o in by_shard) for f in fields}


async def set_offsets(redis: aioredis.Redis, prefix: str, values: Mapping[str, int]) -> None:
    """Store these offsets in every shard, as a Redis that lost the writes after them would hold."""
    for s in await shards(redis, prefix):
        await redis.hset(names.shard_key(prefix, s, names.OFFSETS), mapping=dict(values))


async def stats(redis: aioredis.Redis, prefix: str) -> dict[str, int]:
    """The worker's counters summed over the shards (applied_at_ms left out)."""
    out: dict[str, int] = {}
    for s in await shards(redis, prefix):
        for k, v in (await redis.hgetall(names.shard_key(prefix, s, names.STATS))).items():
            if k != names.stat.APPLIED_AT_MS:
                out[k] = out.get(k, 0) + int(v)
    return out


async def nation(redis: aioredis.Redis, prefix: str) -> dict[str, str]:
    """The nation's region fields: its provinces' summed, as_of_ms their latest (as strings, as a hash holds)."""
    out: dict[str, int] = {}
    for s in await shards(redis, prefix):
        for k, v in (await redis.hgetall(names.key(prefix, names.REGION, s))).items():
            out[k] = max(out.get(k, 0), int(v)) if k == names.field.AS_OF_MS else out.get(k, 0) + int(v)
    return {k: str(v) for k, v in out.items()}


# The keys that hold figures; the write path's own (offsets, dedup, ledger, corrections, stats) differ by design.
FIGURES = (names.LOCATION, names.REGION, names.REACH_INDEX, names.LAPSE, names.STATIONS)


async def figures(redis: aioredis.Redis, prefix: str) -> dict[str, Any]:
    """Every figure key under ``prefix``, by its name without the prefix; counters at 0 and the newest-event time
    left out (a withdrawal leaves a counter at 0, and as_of_ms says when data last came, not what it counts)."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        name = str(key)[len(prefix) + 1 :]
        if not any(f"}}:{kind}" in name or name.startswith(kind) for kind in FIGURES):
            continue
        kind = await redis.type(key)
        if kind == "hash":
            value: Any = {k: v for k, v in (await redis.hgetall(key)).items() if v != "0" and k != names.field.AS_OF_MS}
        elif kind == "zset":
            value = dict(await redis.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            value = set(await redis.smembers(key))
        else:
            continue
        if value:
            out[name] = value
    return out
