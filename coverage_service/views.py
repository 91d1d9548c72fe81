"""Read functions over the Redis read model, for the coverage API. No HTTP here.

The client must decode responses (``decode_responses=True``). A region and its children take two
round trips (the region and its children's codes, then every child's figures), each a MULTI/EXEC
so the figures inside one round trip are from one moment of the worker's atomic apply script.
"""

from __future__ import annotations

from typing import Any, Final

import redis.asyncio as aioredis
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12 (response models)

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


async def region_figures(redis: aioredis.Redis, prefix: str, code: str) -> Coverage | None:
    """A region (``CN`` or a 2/4/6/9-digit code) with its children, or None if not in the registry."""
    national = code == names.NATIONAL
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hget(names.key(prefix, names.REG_KIND), code)
        pipe.hget(names.key(prefix, names.REG_UNIT, code), unit.NAME)
        pipe.hmget(names.key(prefix, names.REGION, code), _REGION_FIELDS)
        pipe.smembers(names.key(prefix, names.REG_CHILDREN, code))
        kind, name, figures, children = await pipe.execute()
    if kind is None and not national:
        return None
    level = divisions.NATION if national else divisions.level_of(code)
    head = _figures(code, name or (NATIONAL_NAME if national else None), level, figures)
    return {**head, "children": await _children(redis, prefix, sorted(children)), "definition": DEFINITION}


async def _children(redis: aioredis.Redis, prefix: str, codes: list[str]) -> list[Figures]:
    if not codes:
        return []
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hmget(names.key(prefix, names.REG_KIND), codes)
        for c in codes:
            pipe.hget(names.key(prefix, names.REG_UNIT, c), unit.NAME)
            if len(c) == 12:
                pipe.hmget(names.key(prefix, names.LOCATION, c), _LOC_FIELDS)
            else:
                pipe.hmget(names.key(prefix, names.REGION, c), _REGION_FIELDS)
        kinds, *rest = await pipe.execute()
    out: list[Figures] = []
    for i, (c, kind) in enumerate(zip(codes, kinds, strict=True)):
        name, values = rest[2 * i], rest[2 * i + 1]
        if len(c) != 12:
            out.append(_figures(c, name, divisions.level_of(c), values))
        elif kind == divisions.KIND_VILLAGE:  # a township lists its administrative villages only
            reached, last_ms = values
            out.append(_figures(c, name, VILLAGE_LEVEL, [1, 1 if reached == "1" else 0, last_ms]))
    return out


def _figures(code: str, name: str | None, level: str, values: list[Any]) -> Figures:
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
