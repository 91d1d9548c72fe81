"""The read model's writer: runs the apply script, which folds records and stores offsets in one step."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from coverage_service.fold import Record, payload
from coverage_service.readmodel import scripts
from lastmile import names

# The apply script's refusals: it writes nothing and fails with an error that starts with one of these.
REGISTRY_MISSING = "REGISTRY_MISSING"
READ_MODEL_BEHIND = "READ_MODEL_BEHIND"


class RegistryMissing(Exception):
    """No whole registry in Redis: folding now would take every event for an unknown location."""


class ReadModelBehind(Exception):
    """Redis holds an older offset than the worker applied: it lost applied batches."""


_REFUSALS: dict[str, type[Exception]] = {REGISTRY_MISSING: RegistryMissing, READ_MODEL_BEHIND: ReadModelBehind}


@dataclass(frozen=True, slots=True)
class Applied:
    events_applied: int
    events_duplicate: int
    events_unknown_location: int
    records_applied: int
    records_replayed: int
    villages_newly_reached: int


class ReadModelWriter:
    def __init__(self, redis: aioredis.Redis, prefix: str, dedup_window_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.window = dedup_window_seconds
        self._apply = redis.register_script(scripts.source("apply.lua", prefix, prelude=True))

    async def apply(self, records: list[Record], expect: Mapping[str, int] | None = None) -> Applied:
        """Fold ``records`` and store their offsets, atomically; records already applied are skipped.

        ``expect``: per partition (offset field), the offset Redis must hold already; when it holds less, nothing
        is written and :class:`ReadModelBehind` is raised (it lost applied batches). :class:`RegistryMissing`,
        writing nothing, while no whole registry is loaded.
        """
        if not records:
            return Applied(0, 0, 0, 0, 0, 0)
        now_ms = int(time.time() * 1000)
        try:
            result = await self._apply(args=[self.window, now_ms, payload(records, expect)])
        except ResponseError as exc:
            refusal = _REFUSALS.get(str(exc).split(" ", 1)[0])
            if refusal is not None:
                raise refusal(str(exc)) from exc
            raise
        return Applied(*(int(x) for x in result))

    async def unknown_locations(self, codes: set[str]) -> set[str]:
        """The codes the registry does not hold; :class:`RegistryMissing` while no whole registry is loaded
        (after a wipe, or during the first load), when every code would look unknown."""
        ordered = sorted(codes)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(names.key(self.prefix, names.REG_META))
            if ordered:
                pipe.hmget(names.key(self.prefix, names.REG_KIND), ordered)
            loaded, *found = await pipe.execute()
        if not loaded:
            raise RegistryMissing("the division registry is not loaded in Redis (lastmile registry load); waiting")
        kinds = found[0] if found else []
        return {code for code, kind in zip(ordered, kinds, strict=True) if kind is None}

    async def forget_offset(self, topic: str, partition: int) -> None:
        await self.redis.hdel(names.key(self.prefix, names.OFFSETS), names.offset_field(topic, partition))

    async def applied_offsets(self) -> dict[str, int]:
        raw = await self.redis.hgetall(names.key(self.prefix, names.OFFSETS))
        return {_text(k): int(v) for k, v in raw.items()}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
