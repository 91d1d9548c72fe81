"""Read functions over the Redis read model, for the coverage API. No HTTP here.

The client must decode responses (``decode_responses=True``). A region and its children take two
round trips (the region and its children's codes, then every child's figures), each a MULTI/EXEC
so the figures inside one round trip are from one moment of the worker's atomic apply script.
"""

from __future__ import annotations

from typing import Any, Final

import redis.asyncio as aioredis
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12 (response models)

from coverage_service.scope import ALL, Scope
from lastmile import divisions, names, scan
from lastmile.names import field, stat, unit

NATIONAL_NAME: Final = "全国"
VILLAGE_LEVEL: Final = "village"  # the `level` of a 12-digit child in a township's list
_REGION_FIELDS: Final = (field.VILLAGES_TOTAL, field.VILLAGES_REACHED, field.AS_OF_MS)
_LOC_FIELDS: Final = (field.REACHED, field.LAST_REACH_MS)
_ANCESTORS: Final = ((divisions.TOWNSHIP, 9), (divisions.COUNTY, 6), (divisions.CITY, 4), (divisions.PROVINCE, 2))


class Definition(TypedDict):
    reached: str
    reach_event_types: list[str]
    counted_units: str
    counted_kinds: list[str]
    coverage_rate: str


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
    reached: bool
    first_reach_at: str | None
    last_reach_at: str | None
    counts: Counts


class Progress(TypedDict):
    offsets: dict[str, int]  # "{topic}:{partition}" -> last applied offset
    stats: dict[str, int]
    national_as_of_ms: int | None


DEFINITION: Final[Definition] = {
    "reached": "A unit is reached from the first scan of one of reach_event_types at it (by any carrier); "
    "it stays reached afterwards.",
    "reach_event_types": sorted(scan.REACH_TYPES),
    "counted_units": "Administrative villages (建制村): registry units of kind 'village'. Residents' committees "
    "and other village-level units are not counted in villages_total or villages_reached.",
    "counted_kinds": [divisions.KIND_VILLAGE],
    "coverage_rate": "villages_reached / villages_total rounded to 6 decimals; null when villages_total is 0.",
}


def coverage_rate(reached: int, total: int) -> float | None:
    return round(reached / total, 6) if total > 0 else None


async def region_figures(
    redis: aioredis.Redis, prefix: str, code: str, sc: Scope = ALL, *, now_ms: int, lapse_ms: int
) -> Coverage | None:
    """A region (``CN`` or a 2/4/6/9-digit code) with its children, or None if not in the registry."""
    head = (await figures_many(redis, prefix, [code], sc, now_ms=now_ms, lapse_ms=lapse_ms)).get(code)
    if head is None:
        return None
    children = sorted(map(str, await redis.smembers(names.key(prefix, names.REG_CHILDREN, code))))
    if len(code) == 9:
        rows = await village_figures(redis, prefix, children, sc, now_ms=now_ms, lapse_ms=lapse_ms)
    else:
        many = await figures_many(redis, prefix, children, sc, now_ms=now_ms, lapse_ms=lapse_ms)
        rows = [many[c] for c in children if c in many]
    return {**head, "children": rows, "definition": DEFINITION}


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
        if kind != divisions.KIND_VILLAGE:  # a township lists its administrative villages only
            continue
        if sc.min_population is not None and (population is None or int(population) < sc.min_population):
            continue
        is_reached = reached == "1"
        last = last_ms or any_last_ms
        active = is_reached and last is not None and int(last) >= cutoff
        out.append({
            **_figures(c, name, VILLAGE_LEVEL, [1, 1 if is_reached else 0, any_last_ms]),
            "villages_active": 1 if active else 0,
            "villages_lapsed": 1 if is_reached and not active else 0,
            "villages_with_station": 1 if stations else 0,
        })  # fmt: skip
    return out


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


async def village_detail(redis: aioredis.Redis, prefix: str, code: str) -> Village | None:
    """One 12-digit unit (of any kind) with its reach times and parcel counts, or None if unknown."""
    ancestors = {level: code[:n] for level, n in _ANCESTORS}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hget(names.key(prefix, names.REG_KIND), code)
        pipe.hget(names.key(prefix, names.REG_UNIT, code), unit.NAME)
        for a in ancestors.values():
            pipe.hget(names.key(prefix, names.REG_UNIT, a), unit.NAME)
        pipe.hgetall(names.key(prefix, names.LOCATION, code))
        kind, name, *ancestor_names, loc = await pipe.execute()
    if kind is None:
        return None
    return {
        "code": code,
        "name": name,
        "kind": kind,
        "township": ancestors[divisions.TOWNSHIP],
        "county": ancestors[divisions.COUNTY],
        "city": ancestors[divisions.CITY],
        "province": ancestors[divisions.PROVINCE],
        "names": dict(zip(ancestors, ancestor_names, strict=True)),
        "reached": loc.get(field.REACHED) == "1",
        "first_reach_at": _time(loc.get(field.FIRST_REACH_MS)),
        "last_reach_at": _time(loc.get(field.LAST_REACH_MS)),
        "counts": {
            "by_event_type": {t: _int(loc.get(field.TYPE + t)) for t in scan.EVENT_TYPES},
            "by_carrier": _family(loc, field.CARRIER),
            "by_cooperation_model": _family(loc, field.MODEL),
            "inbound": _int(loc.get(field.DIRECTION + scan.INBOUND)),
            "outbound": _int(loc.get(field.DIRECTION + scan.OUTBOUND)),
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
    return None if ms is None else scan.format_ms(int(ms))


# -- Figures of many regions at once, in a scope, with the lapse window --------------------------------


async def population_tiers(redis: aioredis.Redis, prefix: str) -> tuple[int, ...]:
    """The population thresholds the read model keeps tier figures for (``?min_population=``)."""
    text = str(await redis.hget(names.key(prefix, names.REG_META), names.meta.POPULATION_TIERS) or "")
    return tuple(int(t) for t in text.split(",") if t)


async def counties_under(redis: aioredis.Redis, prefix: str, code: str) -> list[str]:
    """The county codes at or below a region (``CN``, 2, 4 or 6 digits), walking the registry."""
    if code != names.NATIONAL and len(code) >= 6:
        return [code]
    level = [code]
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for c in level:
                pipe.smembers(names.key(prefix, names.REG_CHILDREN, c))
            level = sorted(child for members in await pipe.execute() for child in members)
        if not level or len(level[0]) >= 6:
            return level


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
    counties = {c: [c] if len(c) in (6, 9) else await counties_under(redis, prefix, c) for c in known}
    cutoff = now_ms - lapse_ms
    suffix = sc.index_suffix()
    async with redis.pipeline(transaction=False) as pipe:
        for c in known:
            for county in counties[c]:
                pipe.zcount(names.key(prefix, names.REACH_INDEX, county + suffix), cutoff, "+inf")
        counts = iter(await pipe.execute())
    out: dict[str, Figures] = {}
    for i, c in enumerate(codes):
        if c not in counties:
            continue
        name, (total, reached, as_of_ms, stations) = rest[2 * i], rest[2 * i + 1]
        active = sum(int(next(counts)) for _ in counties[c])
        national = c == names.NATIONAL
        level = divisions.NATION if national else divisions.level_of(c)
        out[c] = {
            **_figures(c, name or (NATIONAL_NAME if national else None), level, [total, reached, as_of_ms]),
            "villages_active": active,
            "villages_lapsed": _int(reached) - active,
            "villages_with_station": _int(stations),
        }
    return out
