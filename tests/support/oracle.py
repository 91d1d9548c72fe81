"""The test oracle: every figure of a coverage report read a second way, straight from the read model's keys
with redis-py pipelines (no documents.lua), for the tests that hold the API's one read path to the same answers.

It was the API's first read path; it builds its documents with the same builders
(:mod:`coverage_service.readmodel.queries`), so what it checks independently is how the figures are read.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from typing_extensions import TypedDict

from coverage_service.readmodel.filters import ALL, Filter
from coverage_service.readmodel.queries import (
    _ANCESTORS,
    ANY_CARRIER,
    NATIONAL_NAME,
    Breakdown,
    Coverage,
    Figures,
    Village,
    coverage_rate,
    definition,
    parcels,
    region_document,
    regions_under,
    village_document,
    village_row,
)
from lastmile import divisions, names
from lastmile.names import field, unit
from tests.support import stored

BEIJING: Final = ZoneInfo("Asia/Shanghai")


def window_start_ms(now_ms: int, days: int) -> int:
    """The first moment a village reached then is still active: 00:00 Beijing time, ``days - 1`` days before the
    day of ``now_ms`` (docs/reading-coverage.md), made with the time zone database rather than the fold's sums."""
    today = datetime.fromtimestamp(now_ms / 1000, BEIJING).date()
    return int(datetime.combine(today - timedelta(days=days - 1), time(0), BEIJING).timestamp() * 1000)


async def region_figures(
    redis: aioredis.Redis, prefix: str, code: str, flt: Filter = ALL, *, now_ms: int, lapse_days: int
) -> Coverage | None:
    """A region (``CN`` or a 2/4/6/9-digit code) with its children, or None if not in the registry.

    The region's figures and its children's are read concurrently; every figure is in scope ``flt``.
    """
    heads, rows = await asyncio.gather(
        figures_many(redis, prefix, [code], flt, now_ms=now_ms, lapse_days=lapse_days),
        _children_figures(redis, prefix, code, flt, now_ms=now_ms, lapse_days=lapse_days),
    )
    head = heads.get(code)
    if head is None:
        return None
    return {**head, "children": rows, "definition": definition(flt, lapse_days)}


async def _children_figures(
    redis: aioredis.Redis, prefix: str, code: str, flt: Filter, *, now_ms: int, lapse_days: int
) -> list[Figures]:
    children = sorted(map(str, await redis.smembers(names.key(prefix, names.REG_CHILDREN, code))))
    if len(code) == 9:
        return await village_figures(redis, prefix, children, flt, now_ms=now_ms, lapse_days=lapse_days)
    many = await figures_many(redis, prefix, children, flt, now_ms=now_ms, lapse_days=lapse_days)
    return [many[c] for c in children if c in many]


async def village_figures(
    redis: aioredis.Redis, prefix: str, codes: list[str], flt: Filter, *, now_ms: int, lapse_days: int
) -> list[Figures]:
    """Each administrative village among ``codes`` (in the scope's tier) as a one-village region."""
    if not codes:
        return []
    reached_flag, last_field = field.REACHED + flt.dim, field.LAST_REACH_MS + flt.dim
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hmget(names.shard_key(prefix, codes[0], names.REG_KIND), codes)  # villages of one region: one province
        for c in codes:
            pipe.hmget(names.key(prefix, names.REG_UNIT, c), [unit.NAME, unit.POPULATION])
            pipe.hmget(names.key(prefix, names.LOCATION, c), [reached_flag, last_field, field.LAST_REACH_MS])
            pipe.scard(names.key(prefix, names.STATIONS, c))
        kinds, *rest = await pipe.execute()
    cutoff = window_start_ms(now_ms, lapse_days)
    out: list[Figures] = []
    for i, (c, kind) in enumerate(zip(codes, kinds, strict=True)):
        (name, population), (reached, last_ms, any_last_ms), stations = rest[3 * i : 3 * i + 3]
        row = village_row(c, kind, name, population, reached, last_ms, any_last_ms, stations, flt=flt, cutoff_ms=cutoff)
        if row is not None:
            out.append(row)
    return out


async def village_detail(
    redis: aioredis.Redis, prefix: str, code: str, *, now_ms: int, lapse_days: int
) -> Village | None:
    """One 12-digit unit (of any kind) with its reach times, stations and parcel counts, or None if unknown.

    ``active`` is whether its last reach (by any carrier) is within the lapse window of ``now_ms``.
    """
    ancestors = {level: code[:n] for level, n in _ANCESTORS}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hget(names.shard_key(prefix, code, names.REG_KIND), code)
        pipe.hmget(names.key(prefix, names.REG_UNIT, code), [unit.NAME, unit.POPULATION])
        for a in ancestors.values():
            pipe.hget(names.key(prefix, names.REG_UNIT, a), unit.NAME)
        pipe.hgetall(names.key(prefix, names.LOCATION, code))
        pipe.smembers(names.key(prefix, names.STATIONS, code))
        kind, (name, population), *ancestor_names, loc, stations = await pipe.execute()
    if kind is None:
        return None
    return village_document(
        code, kind, name, population, ancestor_names, loc, stations, now_ms=now_ms, lapse_days=lapse_days
    )


async def counties_under(redis: aioredis.Redis, prefix: str, code: str) -> list[str]:
    """The county codes at or below a region (``CN``, 2, 4 or 6 digits), walking the registry."""
    return (await regions_under(redis, prefix, [code], 6))[code]


# Lapse-index counts are summed inside Redis: a national figure adds up ~2,900 county indexes per scope,
# and a client pipeline of that many ZCOUNTs costs some 25 us each in redis-py, against ~1 us in Redis.
# KEYS: index keys; ARGV: cutoff_ms, then the number of consecutive keys of each group. Returns the sums.
_SUM_ZCOUNTS: Final = """
local cutoff, k, sums = ARGV[1], 1, {}
for g = 2, #ARGV do
  local sum = 0
  for _ = 1, tonumber(ARGV[g]) do
    sum = sum + redis.call('ZCOUNT', KEYS[k], cutoff, '+inf')
    k = k + 1
  end
  sums[#sums + 1] = sum
end
return sums
"""


# Redis runs one script at a time: a call this size takes a few ms, a pause the worker's applies hardly see.
_KEYS_PER_CALL: Final = 4096


async def count_active(
    redis: aioredis.Redis, prefix: str, groups: Sequence[tuple[Sequence[str], Filter]], cutoff_ms: int
) -> list[int]:
    """For each (counties or townships, scope) group, its villages reached at or after ``cutoff_ms`` in the
    scope: the sum of the group's lapse-index counts. One pipeline of a few script calls."""
    flat: list[tuple[int, str]] = []  # (group, index key)
    for g, (regions, flt) in enumerate(groups):
        suffix = flt.index_suffix()
        flat.extend((g, names.key(prefix, names.REACH_INDEX, r + suffix)) for r in regions)
    totals = [0] * len(groups)
    if not flat:
        return totals
    script = redis.register_script(_SUM_ZCOUNTS)
    calls: list[list[int]] = []  # the group of each sum a call returns
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, len(flat), _KEYS_PER_CALL):
            chunk = flat[start : start + _KEYS_PER_CALL]
            runs = [(g, len(list(run))) for g, run in itertools.groupby(chunk, key=operator.itemgetter(0))]
            calls.append([g for g, _ in runs])
            await script(keys=[k for _, k in chunk], args=[cutoff_ms, *(n for _, n in runs)], client=pipe)
        results = await pipe.execute()
    for call, sums in zip(calls, results, strict=True):
        for g, n in zip(call, sums, strict=True):
            totals[g] += int(n)
    return totals


async def figures_many(
    redis: aioredis.Redis, prefix: str, codes: list[str], flt: Filter, *, now_ms: int, lapse_days: int
) -> dict[str, Figures]:
    """Figures of regions (``CN`` or 2/4/6/9 digits) in scope ``flt``; regions not in the registry are left out.

    Active villages are counted in the lapse indexes, which townships and counties keep: a township or
    county is one ZCOUNT, a larger region the sum over its counties.
    """
    if not codes:
        return {}
    fields = [flt.total_field, flt.reached_field, field.AS_OF_MS, flt.station_field]
    async with redis.pipeline(transaction=True) as pipe:
        for c in codes:
            pipe.hget(names.shard_key(prefix, c, names.REG_KIND), c)
        for c in codes:
            pipe.hget(names.key(prefix, names.REG_UNIT, c), unit.NAME)
            pipe.hmget(names.key(prefix, names.REGION, c), fields)
        replies = await pipe.execute()
    kinds, rest = replies[: len(codes)], replies[len(codes) :]
    if names.NATIONAL in codes:  # no hash of its own: its provinces' summed
        nation = await stored.nation(redis, prefix)
        rest[2 * codes.index(names.NATIONAL) + 1] = [nation.get(f) for f in fields]
    known = [c for c, kind in zip(codes, kinds, strict=True) if kind is not None or c == names.NATIONAL]
    counties = await regions_under(redis, prefix, known, 6)
    actives = await count_active(
        redis, prefix, [(counties[c], flt) for c in known], window_start_ms(now_ms, lapse_days)
    )
    active_of = dict(zip(known, actives, strict=True))
    out: dict[str, Figures] = {}
    for i, c in enumerate(codes):
        if c not in active_of:
            continue
        name, (total, reached, as_of_ms, stations) = rest[2 * i], rest[2 * i + 1]
        national = c == names.NATIONAL
        level = divisions.NATION if national else divisions.level_of(c)
        name = name or (NATIONAL_NAME if national else None)
        out[c] = region_document(c, name, level, total, reached, as_of_ms, stations, active_of[c])
    return out


async def region_breakdown(
    redis: aioredis.Redis, prefix: str, code: str, flt: Filter, *, now_ms: int, lapse_days: int
) -> Breakdown:
    """The breakdown of region ``code`` (``CN`` or 2/4/6/9 digits) in scope ``flt``; empty for an unknown code."""
    hash_ = (
        stored.nation(redis, prefix) if code == names.NATIONAL else redis.hgetall(names.key(prefix, names.REGION, code))
    )
    raw, counties = await asyncio.gather(hash_, counties_under(redis, prefix, code))
    region = {str(k): str(v) for k, v in raw.items()}
    tier = flt.min_population
    carriers: list[tuple[str, Filter]] = []
    models: list[tuple[str, Filter]] = []
    if flt.carrier is not None:
        carriers = [(flt.carrier, flt)]
    elif flt.cooperation_model is not None:
        models = [(flt.cooperation_model, flt)]
    else:
        carriers = [(ANY_CARRIER, flt)] + [
            (c, Filter(carrier=c, min_population=tier)) for c in _dims(region, field.CARRIER)
        ]
        models = [(m, Filter(cooperation_model=m, min_population=tier)) for m in _dims(region, field.MODEL)]
    scopes = [s for _, s in carriers + models]
    actives = await count_active(redis, prefix, [(counties, s) for s in scopes], window_start_ms(now_ms, lapse_days))
    active_of = dict(zip(scopes, actives, strict=True))
    total = int(region.get(flt.total_field, 0))

    def reach(s: Filter) -> _Reach:
        reached = int(region.get(s.reached_field, 0))
        return {
            "villages_reached": reached,
            "villages_active": active_of[s],
            "coverage_rate": coverage_rate(reached, total),
        }

    return {
        "by_carrier": None if flt.cooperation_model is not None else [{"carrier": c, **reach(s)} for c, s in carriers],
        "by_cooperation_model": None
        if flt.carrier is not None
        else [{"cooperation_model": m, **reach(s)} for m, s in models],
        "parcels": parcels(region) if flt == ALL else None,
    }


class _Reach(TypedDict):
    villages_reached: int
    villages_active: int
    coverage_rate: float | None


def _dims(region: dict[str, str], family: str) -> list[str]:
    """The carriers (or models) with a reach count in the region: ``villages_reached|carrier:X`` fields."""
    head = field.VILLAGES_REACHED + field.DIM_SEP + family
    return sorted(k[len(head) :] for k in region if k.startswith(head) and field.TIER_SEP not in k)
