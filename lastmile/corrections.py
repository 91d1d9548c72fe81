"""The corrections list as the read model keeps it (one hash per shard, written by the worker with each decision),
read for carriers (their own) and for regulators (their region). docs/corrections.md."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from lastmile import backlog, names


async def read(
    redis: aioredis.Redis,
    prefix: str,
    *,
    carrier: str | None = None,
    region: str | None = None,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """Every correction matching the filters (``region``: a code its location is under; None or CN: all), the
    newest decision first. Corrections are rare, so each shard's hash is read whole."""
    shards = await backlog.shards(redis, prefix)
    if region and region != names.NATIONAL:
        shards = [s for s in shards if s == region[:2]]
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.hvals(names.shard_key(prefix, shard, names.CORRECTIONS))
        replies = await pipe.execute()
    out = []
    for values in replies:
        for raw in values:
            doc = orjson.loads(raw)
            if carrier is not None and doc["carrier"] != carrier:
                continue
            if region and region != names.NATIONAL and not doc["location_code"].startswith(region):
                continue
            if status is not None and doc["status"] != status:
                continue
            out.append(doc)
    out.sort(key=lambda d: (d["decided_at"], d["position"]), reverse=True)
    return out
