"""A registry written by hand, for tests that need a few units and nothing else: only what the worker reads
(kinds, provinces, the generation and its shard copies, the load record, the key layout), none of the totals a
real load writes."""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from lastmile import names
from tests.support import stored

GENERATION = "seeded"


async def seed_registry(redis: aioredis.Redis, prefix: str, kinds: Mapping[str, str]) -> None:
    provinces = sorted({code[:2] for code in kinds})
    await stored.set_kinds(redis, prefix, kinds)
    await redis.sadd(names.key(prefix, names.REG_CHILDREN, names.NATIONAL), *provinces)
    await redis.set(names.key(prefix, names.REG_GENERATION), GENERATION)
    for province in provinces:
        await redis.set(names.shard_key(prefix, province, names.REG_GENERATION), GENERATION)
    await redis.set(names.key(prefix, names.LAYOUT), names.LAYOUT_VERSION)
    await redis.hset(names.key(prefix, names.REG_META), names.meta.LOADED_AT, "2026-11-22T00:00:00+00:00")
