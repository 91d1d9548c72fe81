"""Reading the division registry's index in Redis: unit kinds by code. Each province's part of the index is in its
shard (``names.shard_key(prefix, code, names.REG_KIND)``), so codes are looked up with one HMGET per shard."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from lastmile import names


async def kinds(redis: aioredis.Redis, prefix: str, codes: Sequence[str]) -> list[str | None]:
    """The kind of each code (None: not in the registry), in the order asked."""
    by_shard: dict[str, list[int]] = {}
    for i, code in enumerate(codes):
        by_shard.setdefault(code[:2], []).append(i)
    out: list[str | None] = [None] * len(codes)
    if not by_shard:
        return out
    async with redis.pipeline(transaction=False) as pipe:
        for shard, positions in by_shard.items():
            pipe.hmget(names.shard_key(prefix, shard, names.REG_KIND), [codes[i] for i in positions])
        replies = await pipe.execute()
    for positions, reply in zip(by_shard.values(), replies, strict=True):
        for i, kind in zip(positions, reply, strict=True):
            out[i] = None if kind is None else str(kind)
    return out
