"""Writes a validated village registry into the read model, exact against coverage the worker already counted.

Units go in chunks, each one atomic run of registry.lua, so the figures stay exact while the worker keeps applying
scans, and a load can be repeated or resumed (docs/registry.md).
"""

from __future__ import annotations

import base64
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import orjson
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from coverage_service.readmodel import durable, scripts
from lastmile import backlog, editions, names
from lastmile.divisions import KIND_REMOVED
from lastmile.registry import NATION_NAME, Registry, Unit

# Redis runs nothing else while a chunk's script runs: 2,000 units take about 20 ms here (5,000 took 60-90 ms),
# a pause the worker's apply script hardly notices, while the round trips stay a small part of the load.
CHUNK_UNITS: Final = 2000


class LayoutMismatch(RuntimeError):
    """The read model in Redis was written in another key layout than this version's (names.LAYOUT_VERSION)."""


@dataclass(frozen=True)
class LoadReport:
    kinds: dict[str, int]  # village-level units per kind, in this edition
    regions: dict[str, int]  # regions per level, in this edition
    added: int  # units new to the read model
    reclassified: int  # units whose kind changed
    elapsed_seconds: float


async def load_registry(
    redis: aioredis.Redis,
    prefix: str,
    registry: Registry,
    progress: Callable[[int, int], None] | None = None,
    population_tiers: Sequence[int] = (),
    edition: str = "",
    removed: Sequence[Unit] = (),
) -> LoadReport:
    """Write ``registry`` under ``prefix``; ``progress(done, total)`` is called with unit counts after each chunk.

    ``population_tiers`` are the thresholds whose tier figures (``?min_population=``) are kept; the tiers in
    force are recorded in ``reg:meta``, and a load with other tiers moves every village to the new ones.
    ``edition`` names it there (``--edition 2023``); its units are kept per shard for the next edition's change list.
    ``removed`` are the loaded edition's units this one does not hold: they leave every figure and list.
    """
    started = time.perf_counter()
    script = redis.register_script(scripts.source("registry.lua", prefix, prelude=True))
    meta_key = names.key(prefix, names.REG_META)
    stored = await redis.get(names.key(prefix, names.LAYOUT))
    layout = None if stored is None else str(stored)
    if await redis.exists(meta_key) and layout != names.LAYOUT_VERSION:
        raise LayoutMismatch(layout_mismatch(prefix, layout))
    old_tiers = await redis.hget(meta_key, names.meta.POPULATION_TIERS) or ""
    new_tiers = format_tiers(population_tiers)
    # Chunks of one province each: a chunk's keys are all in the province's shard (one hash slot).
    by_province: dict[str, list[Unit]] = {}
    for u in registry.units():  # parents before their children
        by_province.setdefault(u.code[:2], []).append(u)
    kept = {p: len(units) for p, units in by_province.items()}  # this edition's units, before the removed ones
    for u in removed:
        by_province.setdefault(u.code[:2], []).append(Unit(u.code, u.name, KIND_REMOVED))
    total = sum(len(units) for units in by_province.values())
    await redis.sadd(names.key(prefix, names.REG_CHILDREN, names.NATIONAL), *(p.code for p in registry.provinces))
    load = uuid.uuid4().hex  # generations of this load: unlike a counter, never equal to an earlier load's
    added = reclassified = done = 0
    for province, units in by_province.items():
        for start in range(0, len(units), CHUNK_UNITS):
            chunk = units[start : start + CHUNK_UNITS]
            rows = [(u.code, u.name, u.kind, "" if u.population is None else str(u.population)) for u in chunk]
            chunk_added, chunk_reclassified = await script(
                keys=[names.shard_key(prefix, province, names.REG_GENERATION)],  # routes it to the shard's master
                args=[orjson.dumps(rows), old_tiers, new_tiers, f"{load}:{done}", province],
            )
            added += int(chunk_added)
            reclassified += int(chunk_reclassified)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    gone = [u.code for u in removed if len(u.code) == 2]  # the nation's list is written here, not by the script
    if gone:
        await redis.srem(names.key(prefix, names.REG_CHILDREN, names.NATIONAL), *gone)
    # Last, so that registry_loaded turns true only once a whole edition is in. Units of an earlier edition are
    # removed only when named in ``removed`` (the CLI names those the loaded edition has and this one has not).
    async with redis.pipeline(transaction=False) as pipe:
        for province, units in by_province.items():
            listed = orjson.dumps([(u.code, u.name, u.kind) for u in units[: kept.get(province, 0)]])
            # Text (base64), so that clients decoding replies as UTF-8 read it too.
            pipe.set(names.shard_key(prefix, province, names.REG_EDITION), base64.b64encode(zlib.compress(listed, 6)))
        await pipe.execute()
    await _write_meta(redis, prefix, registry, new_tiers, f"{load}:meta", edition)
    # A registry is not derived from the scan topic: a restart must not roll it back to an older save.
    await durable.saved(redis)
    return LoadReport(
        kinds=dict(registry.kind_counts),
        regions=registry.level_counts,
        added=added,
        reclassified=reclassified,
        elapsed_seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class Loaded:
    """The edition in the read model: its name (``""`` when the load gave none) and its units."""

    edition: str
    units: dict[str, editions.Record]


async def loaded_edition(redis: aioredis.Redis, prefix: str) -> Loaded | None:
    """The edition loaded last, or None when none was, or it was loaded before editions were recorded."""
    if not await registry_loaded(redis, prefix):
        return None
    provinces = sorted(str(p) for p in await redis.smembers(names.key(prefix, names.REG_CHILDREN, names.NATIONAL)))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(names.key(prefix, names.REG_META), names.meta.EDITION)
        for province in provinces:
            pipe.get(names.shard_key(prefix, province, names.REG_EDITION))
        name, *blobs = await pipe.execute()
    if any(b is None for b in blobs):
        return None
    units: dict[str, editions.Record] = {}
    for blob in blobs:
        listed = orjson.loads(zlib.decompress(base64.b64decode(blob)))
        units.update((code, (unit_name, kind)) for code, unit_name, kind in listed)
    return Loaded("" if name is None else str(name), units)


async def registry_loaded(redis: aioredis.Redis, prefix: str) -> bool:
    """Whether a whole registry edition has been loaded under ``prefix``."""
    return bool(await redis.exists(names.key(prefix, names.REG_META)))


def layout_mismatch(prefix: str, layout: str | None) -> str:
    return (
        f"the read model under {prefix!r} is in key layout {layout or '1'}, this version writes layout "
        f"{names.LAYOUT_VERSION}: rebuild it from the topic (lastmile rebuild --wipe --registry DIR)"
    )


def format_tiers(tiers: Sequence[int]) -> str:
    return ",".join(str(t) for t in sorted(set(tiers)))


async def _write_meta(
    redis: aioredis.Redis, prefix: str, registry: Registry, tiers: str, generation: str, edition: str
) -> None:
    """The nation's unit, the load record, then every shard's copy of the registry generation (the nation has no
    region hash: its figures are its provinces' summed). Keys of several hash slots, so in this order: the record
    (with the population tiers) before the copies, which a shard's batches are checked against; on a first load the
    worker waits for its shard's copy."""
    meta_key = names.key(prefix, names.REG_META)
    meta: dict[FieldT, EncodableT] = {
        names.meta.LOADED_AT: datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        names.meta.SOURCE: str(registry.source),
        names.meta.POPULATION_TIERS: tiers,
        names.meta.EDITION: edition,
    }
    meta.update(registry.level_counts)
    meta.update(registry.kind_counts)
    # A shard per province, those of earlier editions included (units are never removed). A province new to the
    # read model starts where every shard has applied to: what came before counted as unknown (docs/read-model.md).
    earlier = {str(p) for p in await redis.smembers(names.key(prefix, names.REG_CHILDREN, names.NATIONAL))}
    had = [p for p in earlier if await redis.exists(names.shard_key(prefix, p, names.REG_GENERATION))]
    shards = sorted(earlier | {p.code for p in registry.provinces})
    floor: dict[FieldT, EncodableT] = {f: o for f, o in (await backlog.applied_offsets(redis, prefix, had)).items()}
    await redis.hset(names.key(prefix, names.REG_UNIT, names.NATIONAL), names.unit.NAME, NATION_NAME)
    await redis.set(names.key(prefix, names.LAYOUT), names.LAYOUT_VERSION)
    await redis.set(names.key(prefix, names.REG_GENERATION), generation)
    async with redis.pipeline(transaction=True) as pipe:  # one key: a whole record at every moment
        pipe.delete(meta_key)
        pipe.hset(meta_key, mapping=meta)
        await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for province in shards:
            if province not in had and floor:
                pipe.hset(names.shard_key(prefix, province, names.OFFSETS), mapping=floor)
            pipe.set(names.shard_key(prefix, province, names.REG_GENERATION), generation)
        await pipe.execute()
