"""A registry written by hand, for tests that need a few units and nothing else: only what the worker reads
(kinds, the load record, the key layout), none of the totals a real load writes."""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from lastmile import names


async def seed_registry(redis: aioredis.Redis, prefix: str, kinds: Mapping[str, str]) -> None:
    await redis.hset(names.key(prefix, names.REG_KIND), mapping=dict(kinds))
    await redis.set(names.key(prefix, names.LAYOUT), names.LAYOUT_VERSION)
    await redis.hset(names.key(prefix, names.REG_META), names.meta.LOADED_AT, "2026-11-22T00:00:00+00:00")
