"""How far the read model is behind the topic (records published, not yet applied) and whether Redis, at maxmemory,
refuses the worker's writes. Ingest refuses posts past a bound; both services show it on /readyz and /metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from prometheus_client.core import GaugeMetricFamily
from redis.asyncio.cluster import RedisCluster

from lastmile import names, redis_client

# used_memory moves by client buffers from one moment to the next: Redis that refuses writes can show a little under
# its limit when asked. Within this fraction of it counts as full.
FULL_FRACTION: Final = 0.98


@dataclass(frozen=True, slots=True)
class Memory:
    used_bytes: int
    max_bytes: int  # 0: no limit

    @property
    def full(self) -> bool:
        """At (or all but at) maxmemory: with the noeviction policy Redis refuses writes, the worker's included."""
        return self.max_bytes > 0 and self.used_bytes >= self.max_bytes * FULL_FRACTION

    def fullness(self) -> float:
        return self.used_bytes / self.max_bytes if self.max_bytes else 0.0

    def describe(self) -> str:
        return (
            f"Redis is at maxmemory ({self.used_bytes:,} of {self.max_bytes:,} bytes): it refuses the worker's "
            "writes, so the figures are not updated"
        )


async def memory(redis: aioredis.Redis) -> Memory:
    """Redis's memory; on a cluster, the master nearest its limit's (one full master stops the writes of its
    shards, and a worker's batch needs every shard)."""
    if not redis_client.is_cluster(redis):
        return _memory(await redis.info("memory"))
    per_master = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
    return max((_memory(info) for info in per_master.values()), key=Memory.fullness)


def _memory(info: Mapping[str, Any]) -> Memory:
    return Memory(int(info["used_memory"]), int(info.get("maxmemory", 0)))


async def shards(redis: aioredis.Redis, prefix: str) -> list[str]:
    """The read model's shards: the provinces of its registry (none before one is loaded)."""
    members = await redis.smembers(names.key(prefix, names.REG_CHILDREN, names.NATIONAL))
    return sorted(_text(m) for m in members)


async def applied_offsets(redis: aioredis.Redis, prefix: str, provinces: Sequence[str] | None = None) -> dict[str, int]:
    """Offset field -> the last offset the read model applied in every shard (the lowest of the shards'; -1 for a
    shard without one): the partition's records up to it count in every figure. ``provinces``: those shards only
    (default: every shard)."""
    if provinces is None:
        provinces = await shards(redis, prefix)
    async with redis.pipeline(transaction=False) as pipe:
        for province in provinces:
            pipe.hgetall(names.shard_key(prefix, province, names.OFFSETS))
        replies = [{_text(k): int(v) for k, v in r.items()} for r in await pipe.execute()]
    fields = {f for reply in replies for f in reply}
    return {f: min(reply.get(f, -1) for reply in replies) for f in sorted(fields)}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def lag(topic: str, ends: Mapping[int, int], applied: Mapping[str, int]) -> dict[int, int]:
    """Per partition of ``topic`` (its end offset in ``ends``), the records the read model has not applied."""
    return {p: max(0, end - (applied.get(names.offset_field(topic, p), -1) + 1)) for p, end in ends.items()}


def records_behind(topic: str, ends: Mapping[int, int], applied: Mapping[str, int]) -> int:
    """Records on ``topic`` that the read model has not applied, all partitions together."""
    return sum(lag(topic, ends, applied).values())


def stalled(
    waiting: int, last_applied_s: float | None, waiting_since_s: float | None, now_s: float, bound_s: float
) -> bool:
    """Records wait and none was applied for ``bound_s``, counted from the later of the last batch applied and
    ``waiting_since_s`` (when records were first seen waiting): a record after a quiet hour is not a stall."""
    moments = [t for t in (last_applied_s, waiting_since_s) if t is not None]
    return waiting > 0 and (not moments or now_s - max(moments) > bound_s)


class WaitingSince:
    """When records were first seen waiting, remembered between checks (None while none wait)."""

    def __init__(self) -> None:
        self.since: float | None = None

    def seen(self, waiting: int, now: float) -> float | None:
        if not waiting:
            self.since = None
        elif self.since is None:
            self.since = now
        return self.since


def memory_metrics(memory: Memory) -> list[GaugeMetricFamily]:
    """Redis's memory as both services export it on /metrics."""
    full = "1 when Redis is at maxmemory and refuses the worker's writes: figures are not updated"
    out = [
        GaugeMetricFamily("lastmile_redis_memory_used_bytes", "Redis used_memory", value=memory.used_bytes),
        GaugeMetricFamily("lastmile_redis_memory_max_bytes", "Redis maxmemory (0: no limit)", value=memory.max_bytes),
        GaugeMetricFamily("lastmile_read_model_full", full, value=1 if memory.full else 0),
    ]
    if memory.max_bytes:
        headroom = "Bytes Redis may still take before maxmemory, when it refuses the worker's writes"
        out.append(
            GaugeMetricFamily(
                "lastmile_redis_memory_headroom_bytes", headroom, value=max(0, memory.max_bytes - memory.used_bytes)
            )
        )
    return out
