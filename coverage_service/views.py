"""Read functions over the Redis read model, for the coverage API. No HTTP here.

The client must decode responses (``decode_responses=True``). A region's own figures and its children's
are read concurrently, each a few pipelined round trips whatever the region's size: the hashes of every
region asked for in one MULTI/EXEC (one moment of the worker's atomic apply script), the registry walk down
to the counties one pipeline per level, and the lapse-index counts summed inside Redis (:func:`count_active`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import operator
from collections.abc import Iterable, Sequence
from typing import Any, Final, cast

import redis.asyncio as aioredis
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12 (response models)

from coverage_service.scope import ALL, Scope
from lastmile import divisions, names, scan
from lastmile.names import field, stat, unit

NATIONAL_NAME: Final = "全国"
VILLAGE_LEVEL: Final = "village"  # the `level` of a 12-digit child in a township's list
_ANCESTORS: Final = ((divisions.TOWNSHIP, 9), (divisions.COUNTY, 6), (divisions.CITY, 4), (divisions.PROVINCE, 2))


class ScopeDoc(TypedDict):
    """The scope in force (:meth:`Scope.describe`): null where no filter was asked for."""

    carrier: str | None
    cooperation_model: str | None
    min_population: int | None


class Definition(TypedDict):
    reached: str
    reach_event_types: list[str]
    counted_units: str
    counted_kinds: list[str]
    classification_rule: str
    coverage_rate: str
    lapse_window_days: float
    active: str
    lapsed: str
    villages_with_station: str
    as_of: str
    scope: ScopeDoc


class Figures(TypedDict):
    code: str
    name: str | None
    level: str
    villages_total: int
    villages_reached: int
    coverage_rate: float | None
    as_of: str | None
    villages_active: int
    villages_lapsed: int
    villages_with_station: int


class Coverage(Figures):
    children: list[Figures]
    definition: Definition


class Counts(TypedDict):
    by_event_type: dict[str, int]
    by_carrier: dict[str, int]
    by_cooperation_model: dict[str, int]
    inbound: int
    outbound: int


class Village(TypedDict):
    code: str
    name: str | None
    kind: str
    township: str
    county: str
    city: str
    province: str
    names: dict[str, str | None]
    population: int | None
    reached: bool
    active: bool
    first_reach_at: str | None
    last_reach_at: str | None
    reach_by_carrier: dict[str, str]  # carrier -> its last reach here
    stations: list[str]
    counts: Counts


class Progress(TypedDict):
    offsets: dict[str, int]  # "{topic}:{partition}" -> last applied offset
    stats: dict[str, int]
    national_as_of_ms: int | None


_DAY_MS: Final = 86_400_000


def definition(sc: Scope, lapse_ms: int) -> Definition:
    """What the figures of a response mean, with the lapse window and the scope they were computed in.

    Nothing in it depends on the moment of the request, so an unchanged read model gives an unchanged body
    (and ETag).
    """
    days = lapse_days(lapse_ms)
    return {
        "reached": "An administrative village is reached from the first scan of one of reach_event_types at it "
        "(by any carrier, or by the scope's carrier or cooperation model); it stays reached afterwards.",
        "reach_event_types": sorted(scan.REACH_TYPES),
        "counted_units": "Administrative villages (建制村): registry units of kind 'village'. Residents' committees "
        "and other village-level units are not counted in villages_total or villages_reached.",
        "counted_kinds": [divisions.KIND_VILLAGE],
        "classification_rule": "By the unit's name, first match wins: ends with 村委会 or 村民委员会 -> village; "
        "居委会, 居民委员会 or 社区 -> community; 村 or 嘎查 -> village; anything else -> other. A registry "
        "'kind' column overrides it row by row.",
        "coverage_rate": "villages_reached / villages_total rounded to 6 decimals; null when villages_total is 0.",
        "lapse_window_days": days,
        "active": f"villages_active: reached villages whose last reach (in the scope) is at most {days:g} days "
        "old at the time of the request.",
        "lapsed": "villages_lapsed = villages_reached - villages_active: reached once, but not within the lapse "
        "window (coverage falling back, 防回退).",
        "villages_with_station": "Administrative villages where at least one station_id was reported (一村一站), "
        "by any carrier; restricted by min_population only.",
        "as_of": "The newest occurred_at of any event applied in that region (any carrier, any unit); null "
        "before the first one.",
        "scope": cast(ScopeDoc, sc.describe()),
    }


def lapse_days(lapse_ms: int) -> float:
    """The lapse window in days, as LAPSE_WINDOW_DAYS gave it."""
    return round(lapse_ms / _DAY_MS, 6)


def coverage_rate(reached: int, total: int) -> float | None:
    return round(reached / total, 6) if total > 0 else None


async def region_figures(
    redis: aioredis.Redis, prefix: str, code: str, sc: Scope = ALL, *, now_ms: int, lapse_ms: int
) -> Coverage | None:
    """A region (``CN`` or a 2/4/6/9-digit code) with its children, or None if not in the registry.

    The region's figures and its children's are read concurrently; every figure is in scope ``sc``.
    """
    heads, rows = await asyncio.gather(
        figures_many(redis, prefix, [code], sc, now_ms=now_ms, lapse_ms=lapse_ms),
        _children_figures(redis, prefix, code, sc, now_ms=now_ms, lapse_ms=lapse_ms),
    )
    head = heads.get(code)
    if head is None:
        return None
    return {**head, "children": rows, "definition": definition(sc, lapse_ms)}


async def _children_figures(
    redis: aioredis.Redis, prefix: str, code: str, sc: Scope, *, now_ms: int, lapse_ms: int
) -> list[Figures]:
    children = sorted(map(str, await redis.smembers(names.key(prefix, names.REG_CHILDREN, code))))
    if len(code) == 9:
        return await village_figures(redis, prefix, children, sc, now_ms=now_ms, lapse_ms=lapse_ms)
    many = await figures_many(redis, prefix, children, sc, now_ms=now_ms, lapse_ms=lapse_ms)
    return [many[c] for c in children if c in many]


async def village_figures(
    redis: aioredis.Redis, prefix: str, codes: list[str], sc: Scope, *, now_ms: int, lapse_ms: int
) -> list[Figures]:
    """Each administrative village among ``codes`` (in the scope's tier) as a one-village region."""
    if not codes:
        return []
    reached_flag, last_field = field.REACHED + sc.dim, field.LAST_REACH_MS + sc.dim
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hmget(names.key(prefix, names.REG_KIND), codes)
        for c in codes:
            pipe.hmget(names.key(prefix, names.REG_UNIT, c), [unit.NAME, unit.POPULATION])
            pipe.hmget(names.key(prefix, names.LOCATION, c), [reached_flag, last_field, field.LAST_REACH_MS])
            pipe.scard(names.key(prefix, names.STATIONS, c))
        kinds, *rest = await pipe.execute()
    cutoff = now_ms - lapse_ms
    out: list[Figures] = []
    for i, (c, kind) in enumerate(zip(codes, kinds, strict=True)):
        (name, population), (reached, last_ms, any_last_ms), stations = rest[3 * i : 3 * i + 3]
        row = village_row(c, kind, name, population, reached, last_ms, any_last_ms, stations, sc=sc, cutoff_ms=cutoff)
        if row is not None:
            out.append(row)
    return out


def village_row(
    code: str,
    kind: str | None,
    name: str | None,
    population: Any,
    reached: str | None,
    last_ms: Any,
    any_last_ms: Any,
    stations: int,
    *,
    sc: Scope,
    cutoff_ms: int,
) -> Figures | None:
    """A village-level unit as a one-village region in a township's list; None unless it is an administrative
    village in the scope's tier. ``reached`` and ``last_ms`` are its flag and last reach in the scope's
    dimension, ``any_last_ms`` its last reach by anyone, ``stations`` how many stations it has."""
    if kind != divisions.KIND_VILLAGE:  # a township lists its administrative villages only
        return None
    if sc.min_population is not None and (population is None or int(population) < sc.min_population):
        return None
    is_reached = reached == "1"
    last = last_ms or any_last_ms
    active = is_reached and last is not None and int(last) >= cutoff_ms
    return {
        **_figures(code, name, VILLAGE_LEVEL, [1, 1 if is_reached else 0, any_last_ms]),
        "villages_active": 1 if active else 0,
        "villages_lapsed": 1 if is_reached and not active else 0,
        "villages_with_station": 1 if stations else 0,
    }


def region_document(
    code: str, name: str | None, level: str, total: Any, reached: Any, as_of_ms: Any, stations: Any, active: int
) -> Figures:
    """A region's figures from its hash fields (in a scope) and its active villages (in the same scope).

    Written out rather than built from :func:`_figures`: a national report makes hundreds of these a second.
    """
    total_n = 0 if total is None else int(total)
    reached_n = 0 if reached is None else int(reached)
    return {
        "code": code,
        "name": name,
        "level": level,
        "villages_total": total_n,
        "villages_reached": reached_n,
        "coverage_rate": round(reached_n / total_n, 6) if total_n > 0 else None,
        "as_of": None if as_of_ms is None else format_ms(int(as_of_ms)),
        "villages_active": active,
        "villages_lapsed": reached_n - active,
        "villages_with_station": 0 if stations is None else int(stations),
    }


class _Head(TypedDict):
    code: str
    name: str | None
    level: str
    villages_total: int
    villages_reached: int
    coverage_rate: float | None
    as_of: str | None


def _figures(code: str, name: str | None, level: str, values: list[Any]) -> _Head:
    total, reached, as_of_ms = values
    return {
        "code": code,
        "name": name,
        "level": level,
        "villages_total": _int(total),
        "villages_reached": _int(reached),
        "coverage_rate": coverage_rate(_int(reached), _int(total)),
        "as_of": _time(as_of_ms),
    }


async def village_detail(
    redis: aioredis.Redis, prefix: str, code: str, *, now_ms: int, lapse_ms: int
) -> Village | None:
    """One 12-digit unit (of any kind) with its reach times, stations and parcel counts, or None if unknown.

    ``active`` is whether its last reach (by any carrier) is within the lapse window ``lapse_ms`` of ``now_ms``.
    """
    ancestors = {level: code[:n] for level, n in _ANCESTORS}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hget(names.key(prefix, names.REG_KIND), code)
        pipe.hmget(names.key(prefix, names.REG_UNIT, code), [unit.NAME, unit.POPULATION])
        for a in ancestors.values():
            pipe.hget(names.key(prefix, names.REG_UNIT, a), unit.NAME)
        pipe.hgetall(names.key(prefix, names.LOCATION, code))
        pipe.smembers(names.key(prefix, names.STATIONS, code))
        kind, (name, population), *ancestor_names, loc, stations = await pipe.execute()
    if kind is None:
        return None
    return village_document(code, kind, name, population, ancestor_names, loc, stations, now_ms=now_ms,
                            lapse_ms=lapse_ms)  # fmt: skip


def village_document(
    code: str,
    kind: str,
    name: str | None,
    population: Any,
    ancestor_names: list[str | None],
    loc: dict[str, str],
    stations: Iterable[str],
    *,
    now_ms: int,
    lapse_ms: int,
) -> Village:
    """A village-level unit's detail from its registry entry, its ancestors' names (township, county, city,
    province), its location hash and its stations."""
    ancestors = {level: code[:n] for level, n in _ANCESTORS}
    reached, last_ms = loc.get(field.REACHED) == "1", loc.get(field.LAST_REACH_MS)
    by_carrier = field.LAST_REACH_MS + field.DIM_SEP + field.CARRIER
    by_type = {t: _int(loc.get(field.TYPE + t)) for t in scan.EVENT_TYPES}
    directions = scan.direction_counts(by_type)
    return {
        "code": code,
        "name": name,
        "kind": kind,
        "township": ancestors[divisions.TOWNSHIP],
        "county": ancestors[divisions.COUNTY],
        "city": ancestors[divisions.CITY],
        "province": ancestors[divisions.PROVINCE],
        "names": dict(zip(ancestors, ancestor_names, strict=True)),
        "population": None if population is None else int(population),
        "reached": reached,
        "active": reached and last_ms is not None and int(last_ms) >= now_ms - lapse_ms,
        "first_reach_at": _time(loc.get(field.FIRST_REACH_MS)),
        "last_reach_at": _time(last_ms),
        "reach_by_carrier": {c: scan.format_ms(ms) for c, ms in _family(loc, by_carrier).items()},
        "stations": sorted(stations),
        "counts": {
            "by_event_type": by_type,
            "by_carrier": _family(loc, field.CARRIER),
            "by_cooperation_model": _family(loc, field.MODEL),
            "inbound": directions[scan.INBOUND],
            "outbound": directions[scan.OUTBOUND],
        },
    }


async def progress(redis: aioredis.Redis, prefix: str) -> Progress:
    """How far the worker has got: applied offsets, its stats counters and the newest event time."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(names.key(prefix, names.OFFSETS))
        pipe.hgetall(names.key(prefix, names.STATS))
        pipe.hget(names.key(prefix, names.REGION, names.NATIONAL), field.AS_OF_MS)
        offsets, stats, as_of_ms = await pipe.execute()
    return {
        "offsets": {k: int(v) for k, v in offsets.items()},
        "stats": {k: int(v) for k, v in stats.items() if k in _STAT_FIELDS},
        "national_as_of_ms": None if as_of_ms is None else int(as_of_ms),
    }


_STAT_FIELDS: Final = frozenset(v for k, v in vars(stat).items() if k.isupper())


def _family(hash_: dict[str, str], family: str) -> dict[str, int]:
    return {k[len(family) :]: int(v) for k, v in sorted(hash_.items()) if k.startswith(family)}


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def _time(ms: Any) -> str | None:
    return None if ms is None else format_ms(int(ms))


@functools.lru_cache(maxsize=65536)
def format_ms(ms: int) -> str:
    """:func:`lastmile.scan.format_ms`, remembered: the same times recur in report after report."""
    return scan.format_ms(ms)


# -- Figures of many regions at once, in a scope, with the lapse window --------------------------------


async def population_tiers(redis: aioredis.Redis, prefix: str) -> tuple[int, ...]:
    """The population thresholds the read model keeps tier figures for (``?min_population=``)."""
    text = str(await redis.hget(names.key(prefix, names.REG_META), names.meta.POPULATION_TIERS) or "")
    return tuple(int(t) for t in text.split(",") if t)


async def counties_under(redis: aioredis.Redis, prefix: str, code: str) -> list[str]:
    """The county codes at or below a region (``CN``, 2, 4 or 6 digits), walking the registry."""
    return (await regions_under(redis, prefix, [code], 6))[code]


async def regions_under(redis: aioredis.Redis, prefix: str, codes: Sequence[str], length: int) -> dict[str, list[str]]:
    """For each region (``CN`` or 2/4/6/9 digits), the sorted codes at or below it of at least ``length``
    digits: its counties (6), its townships (9). A region that long already is its own answer.

    Every region is walked together, one pipelined round trip per registry level.
    """
    out = {c: [c] if c != names.NATIONAL and len(c) >= length else [] for c in codes}
    frontier = {c: [c] for c in codes if not out[c]}
    while frontier:
        async with redis.pipeline(transaction=False) as pipe:
            for nodes in frontier.values():
                for n in nodes:
                    pipe.smembers(names.key(prefix, names.REG_CHILDREN, n))
            members = iter(await pipe.execute())
        deeper: dict[str, list[str]] = {}
        for origin, nodes in frontier.items():
            children = sorted(str(child) for _ in nodes for child in next(members))
            out[origin].extend(c for c in children if len(c) >= length)
            if short := [c for c in children if len(c) < length]:
                deeper[origin] = short
        frontier = deeper
    return {c: sorted(below) for c, below in out.items()}


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
    redis: aioredis.Redis, prefix: str, groups: Sequence[tuple[Sequence[str], Scope]], cutoff_ms: int
) -> list[int]:
    """For each (counties or townships, scope) group, its villages reached at or after ``cutoff_ms`` in the
    scope: the sum of the group's lapse-index counts. One pipeline of a few script calls."""
    index = names.key(prefix, names.REACH_INDEX)
    flat: list[tuple[int, str]] = []  # (group, index key)
    for g, (regions, sc) in enumerate(groups):
        suffix = sc.index_suffix()
        flat.extend((g, index + r + suffix) for r in regions)
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
    redis: aioredis.Redis, prefix: str, codes: list[str], sc: Scope, *, now_ms: int, lapse_ms: int
) -> dict[str, Figures]:
    """Figures of regions (``CN`` or 2/4/6/9 digits) in scope ``sc``; regions not in the registry are left out.

    Active villages are counted in the lapse indexes, which townships and counties keep: a township or
    county is one ZCOUNT, a larger region the sum over its counties.
    """
    if not codes:
        return {}
    fields = [sc.total_field, sc.reached_field, field.AS_OF_MS, sc.station_field]
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hmget(names.key(prefix, names.REG_KIND), codes)
        for c in codes:
            pipe.hget(names.key(prefix, names.REG_UNIT, c), unit.NAME)
            pipe.hmget(names.key(prefix, names.REGION, c), fields)
        kinds, *rest = await pipe.execute()
    known = [c for c, kind in zip(codes, kinds, strict=True) if kind is not None or c == names.NATIONAL]
    counties = await regions_under(redis, prefix, known, 6)
    actives = await count_active(redis, prefix, [(counties[c], sc) for c in known], now_ms - lapse_ms)
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
