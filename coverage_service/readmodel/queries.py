"""The one read path of the figures: every figure the API serves and the history keeps is read here.

Each document is one call of ``lua/documents.lua`` (one moment of the read model), the nation's one per province,
summed here; every count it reads is kept by the fold, so its cost does not grow with the villages reached.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, cast

import orjson
import redis.asyncio as aioredis
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12 (response models)

from coverage_service import fold
from coverage_service.readmodel import resp, scripts
from coverage_service.readmodel.filters import ALL, Filter
from lastmile import backlog, divisions, names, redis_client, scan
from lastmile.names import field, stat

SCRIPT: Final = "documents.lua"
FIGURES_PER_CALL: Final = 1000  # regions read by one `figures` call
fld = field


NATIONAL_NAME: Final = "全国"


VILLAGE_LEVEL: Final = "village"  # the `level` of a 12-digit child in a township's list


_ANCESTORS: Final = ((divisions.TOWNSHIP, 9), (divisions.COUNTY, 6), (divisions.CITY, 4), (divisions.PROVINCE, 2))


class FilterDoc(TypedDict):
    """The scope in force (:meth:`Filter.describe`): null where no filter was asked for."""

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
    lapse_window_days: int
    active: str
    lapsed: str
    villages_with_station: str
    as_of: str
    scope: FilterDoc
    registry_edition: str | None


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


ANY_CARRIER: Final = "*"


class CarrierFigures(TypedDict):
    carrier: str  # "*" for any carrier
    villages_reached: int
    villages_active: int
    coverage_rate: float | None


class ModelFigures(TypedDict):
    cooperation_model: str
    villages_reached: int
    villages_active: int
    coverage_rate: float | None


class Parcels(TypedDict):
    """Parcel counts of the region: all carriers, every village-level unit, every year."""

    inbound: int  # 下行
    outbound: int  # 上行
    by_event_type: dict[str, int]
    by_year: dict[str, int]  # China Standard Time year -> parcels delivered, picked up or collected


class Breakdown(TypedDict):
    """Per carrier ("*" is any carrier) and per cooperation model, in the scope's population tier. Null where
    the scope rules it out: by_cooperation_model under ?carrier=, by_carrier under ?cooperation_model=, and
    parcels under any filter (parcel counters are not kept per carrier, model or tier)."""

    by_carrier: list[CarrierFigures] | None
    by_cooperation_model: list[ModelFigures] | None
    parcels: Parcels | None


class CoverageReport(Coverage):
    """A region's coverage document: its figures, its children's, the definition and the breakdown."""

    breakdown: Breakdown


def definition(flt: Filter, lapse_days: int, edition: str | None = None) -> Definition:
    """What the figures of a response mean, with the lapse window and the scope they were computed in.

    Nothing in it depends on the moment of the request, so an unchanged read model gives an unchanged body
    (and ETag).
    """
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
        "lapse_window_days": lapse_days,
        "active": f"villages_active: reached villages whose last reach (in the scope) falls on one of the last "
        f"{lapse_days} days in China Standard Time (UTC+8), the day of the request included: from 00:00 CST "
        f"{lapse_days - 1} days before it. A village lapses when that day ends, not at the hour it was reached.",
        "lapsed": "villages_lapsed = villages_reached - villages_active: reached once, but not within the lapse "
        "window (coverage falling back, 防回退).",
        "villages_with_station": "Administrative villages where at least one station_id was reported (一村一站), "
        "by any carrier; restricted by min_population only.",
        "as_of": "The newest occurred_at of any event applied in that region (any carrier, any unit); null "
        "before the first one.",
        "scope": cast(FilterDoc, flt.describe()),
        # The registry edition the figures were computed on (lastmile registry load --edition); null if unnamed.
        "registry_edition": edition,
    }


def coverage_rate(reached: int, total: int) -> float | None:
    return round(reached / total, 6) if total > 0 else None


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
    flt: Filter,
    cutoff_ms: int,
) -> Figures | None:
    """A village-level unit as a one-village region in a township's list; None unless it is an administrative
    village in the scope's tier. ``reached`` and ``last_ms`` are its flag and last reach in the scope's
    dimension, ``any_last_ms`` its last reach by anyone, ``stations`` how many stations it has."""
    if kind != divisions.KIND_VILLAGE:  # a township lists its administrative villages only
        return None
    if flt.min_population is not None and (population is None or int(population) < flt.min_population):
        return None
    is_reached = reached == "1"
    last = last_ms or any_last_ms
    active = is_reached and last is not None and int(last) >= cutoff_ms
    reached_n, active_n = (1 if is_reached else 0), (1 if active else 0)
    return region_document(code, name, VILLAGE_LEVEL, 1, reached_n, any_last_ms, 1 if stations else 0, active_n)


def region_document(
    code: str, name: str | None, level: str, total: Any, reached: Any, as_of_ms: Any, stations: Any, active: int
) -> Figures:
    """A region's figures from its hash fields (in a scope) and its active villages (in the same scope).

    Written out field by field: a national report makes hundreds of these a second.
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
    lapse_days: int,
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
        "active": reached and last_ms is not None and int(last_ms) >= fold.lapse_window(now_ms, lapse_days).start_ms,
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
    """How far the worker has got: the offsets every shard applied, its counters (the shards' summed) and the
    newest event time (the provinces' latest)."""
    shards = await backlog.shards(redis, prefix)
    offsets = await backlog.applied_offsets(redis, prefix, shards)
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.hgetall(names.shard_key(prefix, shard, names.STATS))
        for shard in shards:
            pipe.hget(names.key(prefix, names.REGION, shard), field.AS_OF_MS)
        replies = await pipe.execute()
    as_of = [int(v) for v in replies[len(shards) :] if v is not None]
    return {
        "offsets": offsets,
        "stats": _summed_stats(replies[: len(shards)]),
        "national_as_of_ms": max(as_of, default=None),
    }


def _summed_stats(shards: Iterable[Mapping[str, str]]) -> dict[str, int]:
    """The worker's counters over its shards: summed, and the latest apply time."""
    out: dict[str, int] = {}
    for stats in shards:
        for k, v in stats.items():
            if k == stat.APPLIED_AT_MS:
                out[k] = max(out.get(k, 0), int(v))
            elif k in _STAT_FIELDS:
                out[k] = out.get(k, 0) + int(v)
    return out


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


async def registry_edition(redis: aioredis.Redis, prefix: str) -> str | None:
    """The name of the registry edition loaded last (``lastmile registry load --edition``); None if unnamed."""
    value = await redis.hget(names.key(prefix, names.REG_META), names.meta.EDITION)
    return (value.decode() if isinstance(value, bytes) else value) or None


async def population_tiers(redis: aioredis.Redis, prefix: str) -> tuple[int, ...]:
    """The population thresholds the read model keeps tier figures for (``?min_population=``)."""
    text = str(await redis.hget(names.key(prefix, names.REG_META), names.meta.POPULATION_TIERS) or "")
    return tuple(int(t) for t in text.split(",") if t)


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


def parcels(region: dict[str, str]) -> Parcels:
    def count(name: str) -> int:
        return int(region.get(name, 0))

    by_type = {t: count(field.TYPE + t) for t in scan.EVENT_TYPES}
    directions = scan.direction_counts(by_type)
    return {
        "inbound": directions[scan.INBOUND],
        "outbound": directions[scan.OUTBOUND],
        "by_event_type": by_type,
        "by_year": {k[len(field.VOLUME) :]: int(v) for k, v in sorted(region.items()) if k.startswith(field.VOLUME)},
    }


def _none(value: Any) -> Any:
    """cjson answers false for a missing value."""
    return None if value is False else value


def _pairs(flat: Any) -> dict[str, str]:
    """A flat HGETALL reply as a dict (cjson makes an empty one ``{}``)."""
    if not isinstance(flat, list):
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def data_time(applied_at_ms: Any, loaded_at: Any) -> int | None:
    """When the read model last changed: the worker's last apply (ms) or the last registry load (ISO 8601 time),
    whichever is later; None before either."""
    times = [t for t in (None if applied_at_ms is None else int(applied_at_ms), _iso_ms(loaded_at)) if t is not None]
    return max(times) if times else None


def data_time_of(raw: Mapping[str, Any]) -> int | None:
    """:func:`data_time` of a script reply (every reply carries the read model's times)."""
    return data_time(_none(raw.get("applied_at")), _none(raw.get("loaded_at")))


async def data_time_ms(redis: aioredis.Redis, prefix: str) -> int | None:
    """:func:`data_time`, read from the read model."""
    shards = await backlog.shards(redis, prefix)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(names.key(prefix, names.REG_META), names.meta.LOADED_AT)
        for shard in shards:
            pipe.hget(names.shard_key(prefix, shard, names.STATS), stat.APPLIED_AT_MS)
        loaded, *applied = await pipe.execute()
    return data_time(max((int(a) for a in applied if a is not None), default=None), loaded)


@functools.lru_cache(maxsize=1024)
def _iso_ms(value: str | None) -> int | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _want_dims(flt: Filter) -> str:
    return "1" if flt.carrier is None and flt.cooperation_model is None else "0"


def _known(code: str, raw: Mapping[str, Any]) -> bool:
    """In the registry's current edition: present, and not removed by it."""
    kind = _none(raw.get("kind"))
    return (bool(kind) and kind != divisions.KIND_REMOVED) or code == names.NATIONAL


def region_rows(rows: Sequence[Sequence[Any]]) -> list[Figures]:
    """Children figures from ``[code, kind, name, total, reached, as_of_ms, stations, active]`` rows; units the
    registry does not know are left out; ``CN`` is the nation."""
    out: list[Figures] = []
    document, levels = region_document, divisions.LEVEL_BY_LENGTH
    for row in rows:
        code, kind, name, total, reached, as_of_ms, stations, active = row[:8]
        if kind is False:
            continue
        national = code == names.NATIONAL
        out.append(
            document(
                code,
                NATIONAL_NAME if national and name is False else None if name is False else name,
                divisions.NATION if national else levels[len(code)],
                total or None,
                reached or None,
                as_of_ms or None,
                stations or None,
                int(active),
            )
        )
    return out


def village_rows(rows: Sequence[Sequence[Any]], flt: Filter, cutoff_ms: int) -> list[Figures]:
    """A township's children from ``[code, kind, name, population, reached, last_ms, any_last_ms, stations]``."""
    return [
        figures
        for row in rows
        if (figures := village_row(*(_none(v) for v in row), flt=flt, cutoff_ms=cutoff_ms)) is not None
    ]


def report(
    code: str,
    flt: Filter,
    raw: Mapping[str, Any],
    active_of: Callable[[str], int],
    children: list[Figures],
    lapse_days: int,
) -> CoverageReport:
    """A region's report: its figures, its children's, the definition and the breakdown.

    ``active_of(dim)`` is the region's active villages in the scope's tier for a dimension suffix.
    """
    region = _pairs(raw["region"])
    national = code == names.NATIONAL
    head = region_document(
        code,
        _none(raw.get("name")) or (NATIONAL_NAME if national else None),
        divisions.NATION if national else divisions.level_of(code),
        region.get(flt.total_field),
        region.get(flt.reached_field),
        region.get(fld.AS_OF_MS),
        region.get(flt.station_field),
        active_of(flt.dim),
    )
    return {
        **head,
        "children": children,
        "definition": definition(flt, lapse_days, _none(raw.get("edition")) or None),
        "breakdown": region_breakdown(region, flt, active_of),
    }


def region_breakdown(region: Mapping[str, str], flt: Filter, active_of: Callable[[str], int]) -> Breakdown:
    """Per carrier (``*`` any carrier) and cooperation model, from the region's hash and its active counts.

    Each entry's reach is read with the scope's tier, under the entry's own dimension (``''`` for any carrier)."""
    tier = flt.tier
    total = int(region.get(flt.total_field, 0))

    def reach(dim: str) -> tuple[int, int, float | None]:
        reached = int(region.get(_REACHED + dim + tier, 0))
        return reached, active_of(dim), round(reached / total, 6) if total > 0 else None

    def entries(kind: str, named: list[tuple[str, str]]) -> list[dict[str, Any]]:
        out = []
        for name, dim in named:
            reached, active, rate = reach(dim)
            out.append({kind: name, "villages_reached": reached, "villages_active": active, "coverage_rate": rate})
        return out

    carriers: list[tuple[str, str]] | None
    models: list[tuple[str, str]] | None
    if flt.carrier is not None:
        carriers, models = [(flt.carrier, flt.dim)], None
    elif flt.cooperation_model is not None:
        carriers, models = None, [(flt.cooperation_model, flt.dim)]
    else:
        found_carriers, found_models = _dims(region)
        carriers = [(ANY_CARRIER, ""), *((c, _CARRIER_DIM + c) for c in found_carriers)]
        models = [(m, _MODEL_DIM + m) for m in found_models]
    return cast(
        Breakdown,
        {
            "by_carrier": None if carriers is None else entries("carrier", carriers),
            "by_cooperation_model": None if models is None else entries("cooperation_model", models),
            "parcels": parcels(dict(region)) if flt == ALL else None,
        },
    )


_REACHED: Final = fld.VILLAGES_REACHED


_CARRIER_DIM: Final = fld.DIM_SEP + fld.CARRIER


_MODEL_DIM: Final = fld.DIM_SEP + fld.MODEL


_CARRIER_HEAD: Final = fld.VILLAGES_REACHED + _CARRIER_DIM


_MODEL_HEAD: Final = fld.VILLAGES_REACHED + _MODEL_DIM


def _dims(region: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The carriers and the models with a reach count in the region: ``villages_reached|carrier:X`` fields."""
    carriers, models = [], []
    for key in region:
        if key.startswith(_CARRIER_HEAD):
            if fld.TIER_SEP not in key:
                carriers.append(key[len(_CARRIER_HEAD) :])
        elif key.startswith(_MODEL_HEAD) and fld.TIER_SEP not in key:
            models.append(key[len(_MODEL_HEAD) :])
    return sorted(carriers), sorted(models)


ScriptCall = Callable[..., Awaitable[Any]]  # (key, *args): documents.lua on the shard of the key
Command = Callable[..., Awaitable[Any]]  # (*args): one Redis command


class Reader:
    """``documents.lua`` on a Redis connection: the calls every figure is read with.

    Each call reads one shard (a province), so a Redis Cluster serves it as one server does; the nation is summed
    here from its provinces' replies (the read model keeps no national hash)."""

    def __init__(self, prefix: str, call: ScriptCall, command: Command) -> None:
        self._prefix = prefix
        self._call = call  # the documents of requests
        self._command = command  # the nation's registry keys (no shard's) and the registry load's time

    @classmethod
    def on(
        cls,
        redis: aioredis.Redis,
        prefix: str,
        *,
        fast: resp.RespClient | None = None,
    ) -> Reader:
        """A reader for key prefix ``prefix``: through redis-py (the client must decode responses; a cluster
        client routes each call by its key), or on the pipelining client ``fast`` when given, the script loaded
        (SCRIPT LOAD) through redis-py."""
        text = scripts.source(SCRIPT, prefix)
        if fast is not None:

            async def load() -> str:
                return str(await redis.script_load(text))

            return cls(prefix, resp.Script(fast, text, load=load), fast.execute)
        script = redis.register_script(text)

        async def call(key: str, *args: str | int) -> Any:
            return await script(keys=[key], args=list(args))

        if redis_client.is_cluster(redis):  # a document fans out over shards; no node's pool may run dry
            bounded = redis_client.Bounded()
            return cls(prefix, bounded(call), bounded(redis.execute_command))
        return cls(prefix, call, redis.execute_command)

    def _key(self, shard: str) -> str:
        """The key a call on ``shard`` (a province, or any code in it) is routed by: the shard's stats hash."""
        return names.shard_key(self._prefix, shard[:2], names.STATS)

    async def _json(self, shard: str, *args: str | int) -> Any:
        return orjson.loads(await self._call(self._key(shard), *args))

    async def _text(self, *command: str) -> str | None:
        value = await self._command(*command)
        return value.decode() if isinstance(value, bytes) else None if value is None else str(value)

    async def _loaded(self) -> tuple[str | None, str | None]:
        """When the registry was loaded, and its edition's name."""
        reply = await self._command(
            "HMGET", names.key(self._prefix, names.REG_META), names.meta.LOADED_AT, names.meta.EDITION
        )
        loaded_at, edition = (v.decode() if isinstance(v, bytes) else None if v is None else str(v) for v in reply)
        return loaded_at, edition

    async def _provinces(self) -> list[str]:
        members = await self._command("SMEMBERS", names.key(self._prefix, names.REG_CHILDREN, names.NATIONAL))
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def _timed(self, reply: Awaitable[Any]) -> Any:
        """A shard's reply with the registry load's time beside its shard's last apply (read in the same round
        trip: the load record is no shard's)."""
        raw, (raw_loaded_at, edition) = await asyncio.gather(reply, self._loaded())
        raw["loaded_at"], raw["edition"] = raw_loaded_at, edition
        return raw

    async def nation(self, window: fold.LapseWindow, flt: Filter) -> Nation:
        """The nation's hash summed from its provinces', with their rows, active counts and the read model's times."""
        provinces, (loaded_at, edition), name = await asyncio.gather(
            self._provinces(),
            self._loaded(),
            self._text("HGET", names.key(self._prefix, names.REG_UNIT, names.NATIONAL), names.unit.NAME),
        )
        scope = (flt.dim, flt.tier, _want_dims(flt))
        replies = await asyncio.gather(*(self._json(p, "provinces", *_window(window), *scope, p) for p in provinces))
        return Nation.of(name, loaded_at, edition, replies)

    async def region(self, code: str, window: fold.LapseWindow, flt: Filter) -> Any:
        """A region's hash, name, kind, active counts and children rows."""
        if code == names.NATIONAL:
            return (await self.nation(window, flt)).document(flt)
        return await self._timed(self._json(code, "region", code, *_window(window), flt.dim, flt.tier, _want_dims(flt)))

    async def village(self, code: str, *, now_ms: int, lapse_days: int) -> tuple[Village | None, int | None]:
        """One 12-digit unit's detail (None if the registry does not hold it) and the read model's last change."""
        raw = await self._timed(self._json(code, "village", code))
        if not _known(code, raw):
            return None, data_time_of(raw)
        name, population = (_none(v) for v in raw["unit"])
        detail = village_document(
            code,
            str(raw["kind"]),
            name,
            population,
            [_none(n) for n in _list(raw["ancestors"])],
            _pairs(raw["loc"]),
            [str(s) for s in _list(raw["stations"])],
            now_ms=now_ms,
            lapse_days=lapse_days,
        )
        return detail, data_time_of(raw)

    async def region_report(self, code: str, flt: Filter, *, now_ms: int, lapse_days: int) -> Made:
        """A region's report (``CN`` or 2/4/6/9 digits; one call, one moment of the read model, except the nation's
        one per province), its data time and the version it was read at."""
        window = fold.lapse_window(now_ms, lapse_days)
        raw = await self.region(code, window, flt)
        version = _none(raw.get("version"))
        if not _known(code, raw):
            return Made(None, data_time_of(raw), version)
        counts = {str(d): int(n) for d, n in _list(raw.get("counts"))}
        rows = _list(raw["children"])
        children = village_rows(rows, flt, window.start_ms) if len(code) == 9 else region_rows(rows)
        body = report(code, flt, raw, lambda dim: counts.get(dim, 0), children, lapse_days)
        return Made(body, data_time_of(raw), version)

    async def version(self, code: str) -> str | None:
        """The version of a region's figures (2/4/6/9 digits): unchanged, its report is the same for the same day
        and filter. None for the nation, which has none."""
        if code == names.NATIONAL:
            return None
        return _decoded(await self._call(self._key(code), "version", code, *_TYPE_FIELDS))

    async def figures(self, codes: Sequence[str], flt: Filter, *, now_ms: int, lapse_days: int) -> dict[str, Figures]:
        """Figures of regions (``CN`` or 2/4/6/9 digits) in filter ``flt``; codes not in the registry are left out."""
        window = fold.lapse_window(now_ms, lapse_days)
        found: dict[str, Sequence[Any]] = {}
        if names.NATIONAL in codes:
            found[names.NATIONAL] = (await self.nation(window, flt)).row(flt)
        for shard, regions in _by_shard([c for c in codes if c != names.NATIONAL]).items():
            for start in range(0, len(regions), FIGURES_PER_CALL):
                chunk = regions[start : start + FIGURES_PER_CALL]
                args: tuple[str | int, ...] = (*_window(window), flt.dim, flt.tier, *chunk)
                for row in _list((await self._json(shard, "figures", *args))["rows"]):
                    found[str(row[0])] = row
        return {f["code"]: f for f in region_rows([found[c] for c in codes if c in found])}


_TYPE_FIELDS: Final = tuple(fld.TYPE + t for t in scan.EVENT_TYPES)


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Made(NamedTuple):
    body: CoverageReport | None
    data_time: int | None  # the read model's last change, ms
    version: str | None  # of the region's figures (Reader.version); None for the nation


def _window(window: fold.LapseWindow) -> tuple[int, int, int]:
    """A window as documents.lua takes it: cutoff_ms first_day last_day."""
    return window.start_ms, window.first_day, window.last_day


def _by_shard(codes: Iterable[str]) -> dict[str, list[str]]:
    """Codes grouped by their shard (province), in their order."""
    out: dict[str, list[str]] = {}
    for code in codes:
        out.setdefault(code[:2], []).append(code)
    return out


@dataclass(frozen=True)
class Nation:
    """The nation, which no shard holds: its provinces' hashes and active counts summed (``as_of_ms`` their latest),
    their rows, and the read model's times (the latest of the shards' last applies)."""

    name: str | None
    loaded_at: str | None
    edition: str | None
    applied_at: int | None
    summed: dict[str, int]
    counts: dict[str, int]  # dimension -> active villages, in the scope's tier
    provinces: list[tuple[str, Any, Any, dict[str, str], dict[str, int]]]  # (code, kind, name, hash, counts)

    @classmethod
    def of(
        cls, name: str | None, loaded_at: str | None, edition: str | None, replies: Sequence[Mapping[str, Any]]
    ) -> Nation:
        summed: dict[str, int] = {}
        counts: dict[str, int] = {}
        provinces = []
        for reply in replies:
            for code, kind, pname, flat, own in _list(reply.get("rows")):
                region = _pairs(flat)
                active = {str(d): int(n) for d, n in _list(own)}
                provinces.append((str(code), kind, pname, region, active))
                for f, v in region.items():
                    n = int(v)
                    summed[f] = max(summed.get(f, n), n) if f == fld.AS_OF_MS else summed.get(f, 0) + n
                for d, n in active.items():
                    counts[d] = counts.get(d, 0) + n
        applied = [int(a) for r in replies if (a := _none(r.get("applied_at"))) is not None]
        return cls(name, loaded_at, edition, max(applied, default=None), summed, counts, provinces)

    def _fields(self, flt: Filter) -> tuple[str, str, str, str]:
        return (flt.total_field, flt.reached_field, fld.AS_OF_MS, flt.station_field)

    def document(self, flt: Filter) -> dict[str, Any]:
        """As documents.lua's ``region`` reply."""
        fields = self._fields(flt)
        children = [
            [code, kind, pname, *(region.get(f, False) for f in fields), active.get(flt.dim, 0)]
            for code, kind, pname, region, active in self.provinces
        ]
        flat = [x for f in sorted(self.summed) for x in (f, str(self.summed[f]))]
        return {
            "kind": "national",
            "name": self.name,
            "region": flat,
            "counts": [[d, n] for d, n in self.counts.items()],
            "children": children,
            "applied_at": self.applied_at,
            "loaded_at": self.loaded_at,
            "edition": self.edition,
        }

    def row(self, flt: Filter) -> list[Any]:
        """As a row of documents.lua's ``figures``."""
        got = [self.summed.get(f) for f in self._fields(flt)]
        active = self.counts.get(flt.dim, 0)
        return [names.NATIONAL, "national", self.name or False, *(False if v is None else str(v) for v in got), active]
