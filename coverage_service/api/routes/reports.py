"""Targets, laggards, history and the subsidy report: the views a bureau runs the programme with.

Every path takes a division code; ``CN`` is the nation's (``/v1/coverage/CN/targets``,
``/v1/coverage/CN/history``, ``/v1/laggards/CN``), as in the read model. The milestone and subsidy
configuration is read and validated when the app starts (a bad file stops it with the setting named).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from typing_extensions import TypedDict

from coverage_service.api.access import Regulator, ensure_in_scope, regulator
from coverage_service.api.params import (
    COUNTY_PATTERN,
    REGION_PATTERN,
    FilterParams,
    documented_pattern,
    documents_of,
    invalid,
    now_ms,
    reader_of,
    redis_of,
    region_code,
    settings_of,
    unknown,
)
from coverage_service.api.representation import Table, respond
from coverage_service.readmodel import history, queries
from coverage_service.readmodel.filters import ALL
from coverage_service.reports import subsidies, targets
from lastmile import divisions, names, problem
from lastmile.names import field, unit
from lastmile.problem import Problem
from lastmile.settings import Settings, SettingsError

DEFAULT_RULES_FILE: Final = Path(subsidies.__file__).with_name("subsidy_rules.json")
DEFAULT_HISTORY_DAYS: Final = 90
MAX_HISTORY_DAYS: Final = 3660
UNIT_LENGTH: Final = {divisions.PROVINCE: 2, divisions.CITY: 4, divisions.COUNTY: 6, divisions.TOWNSHIP: 9}
REGION_DOC: Final = "Division code: CN (the nation), or 2 (province), 4 (city), 6 (county) or 9 (township) digits."
COUNTY_DOC: Final = "6-digit county (区/县) code."

Caller = Annotated[Regulator, Depends(regulator)]
Level = Literal["province", "city", "county", "township"]
_ERRORS = problem.openapi_responses(400, 401, 403, 404, 429, 503)


# -- Configuration ---------------------------------------------------------------------------------


def load_targets(settings: Settings) -> targets.Targets:
    """LASTMILE_COVERAGE_TARGETS or LASTMILE_COVERAGE_TARGETS_FILE (not both), validated; empty: the default."""
    if settings.coverage_targets.strip() and settings.coverage_targets_file:
        raise SettingsError(
            "LASTMILE_COVERAGE_TARGETS and LASTMILE_COVERAGE_TARGETS_FILE are both set; set one of them"
        )
    if settings.coverage_targets_file:
        where = f"LASTMILE_COVERAGE_TARGETS_FILE ({settings.coverage_targets_file})"
        return targets.parse(_read(settings.coverage_targets_file, where), where)
    return targets.parse(settings.coverage_targets, "LASTMILE_COVERAGE_TARGETS")


def load_rules(settings: Settings) -> tuple[subsidies.Rules, str]:
    """(the subsidy rules, where they come from, as the report names it: the file's name, not its path)."""
    path = Path(settings.subsidy_rules_file or DEFAULT_RULES_FILE)
    where = (
        f"LASTMILE_SUBSIDY_RULES_FILE ({path})" if settings.subsidy_rules_file else f"bundled default rules ({path})"
    )
    shown = f"LASTMILE_SUBSIDY_RULES_FILE ({path.name})" if settings.subsidy_rules_file else "bundled default rules"
    return subsidies.parse(_read(str(path), where), where), shown


def _read(path: str, where: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{where}: cannot read it: {exc}") from exc


def configure(app: FastAPI, settings: Settings) -> None:
    """Read and validate the milestones, the subsidy rules and LASTMILE_SNAPSHOT_HOUR into ``app.state``; a
    :class:`SettingsError` names the setting at fault. ``create_app`` may call it to fail before serving; the
    router's lifespan calls it otherwise."""
    history.check_hour(settings.snapshot_hour)
    app.state.targets = load_targets(settings)
    app.state.subsidy_rules = load_rules(settings)


@asynccontextmanager
async def _configure(app: FastAPI) -> AsyncIterator[None]:
    if getattr(app.state, "targets", None) is None:
        configure(app, app.state.settings)
    yield


def _targets_of(request: Request) -> targets.Targets:
    found: targets.Targets = request.app.state.targets
    return found


def _rules_of(request: Request) -> tuple[subsidies.Rules, str]:
    found: tuple[subsidies.Rules, str] = request.app.state.subsidy_rules
    return found


router = APIRouter(tags=["targets and reports"], lifespan=_configure)


# -- Targets ---------------------------------------------------------------------------------------


class PaceDoc(TypedDict):
    villages_per_day: float | None
    since: str | None
    days: int | None
    villages: int | None


class TargetsReport(queries.Figures):
    stale: bool  # as in coverage documents: records wait and none was applied lately
    today: str
    targets_from: str
    pace: PaceDoc
    milestones: list[targets.MilestoneStatus]
    definition: dict[str, Any]


_TARGET_COLUMNS: Final = (
    "code",
    "deadline",
    "min_rate",
    "status",
    "basis",
    "villages_required",
    "gap",
    "days_left",
    "needed_villages_per_day",
    "needed_rate_per_day",
)


@router.get("/v1/coverage/{code}/targets", response_model=TargetsReport, responses=_ERRORS)
async def coverage_targets(
    request: Request,
    who: Caller,
    flt: FilterParams,
    code: str = PathParam(
        description=REGION_DOC, examples=["CN", "14", "140322"], json_schema_extra=documented_pattern(REGION_PATTERN)
    ),
) -> Response:
    """Each coverage milestone of the region (LASTMILE_COVERAGE_TARGETS) with its status — met, missed, on track or at
    risk — the gap in villages and the pace needed to meet it; ``definition`` says exactly how each is decided.
    With ``carrier``, ``cooperation_model`` or ``min_population`` the figures are the scope's, and there is no
    history (so no pace) for them."""
    code = region_code(code)
    ensure_in_scope(who, code)
    settings, redis, now = settings_of(request), redis_of(request), now_ms()
    prefix, lapse = settings.redis_key_prefix, settings.lapse_window_days
    found = await reader_of(request).figures([code], flt, now_ms=now, lapse_days=lapse)
    if code not in found:
        raise unknown(code)
    figures = found[code]
    source, milestones = _targets_of(request).for_code(code)
    today = _china_day(now)
    current = targets.Count(figures["villages_total"], figures["villages_reached"])
    pace: targets.Pace | None = None
    at_deadline: dict[date, targets.Count] = {}
    if flt == ALL:  # history is kept for this scope only
        pace, at_deadline = await _from_history(redis, prefix, code, [m.deadline for m in milestones], today, current)
    rows = [targets.status(m, current, today, at_deadline=at_deadline.get(m.deadline), pace=pace) for m in milestones]
    body: TargetsReport = {
        **figures,
        "stale": documents_of(request).stale(),
        "today": today.isoformat(),
        "targets_from": source,
        "pace": {
            "villages_per_day": None if pace is None else pace.per_day,
            "since": None if pace is None else pace.since.isoformat(),
            "days": None if pace is None else pace.days,
            "villages": None if pace is None else pace.villages,
        },
        "milestones": rows,
        "definition": {
            **queries.definition(flt, settings.lapse_window_days, await queries.registry_edition(redis, prefix)),
            **targets.DEFINITION,
        },
    }
    table = Table(_TARGET_COLUMNS, [[code, *(r[c] for c in _TARGET_COLUMNS[1:])] for r in rows])
    return respond(request, body, table=table, filename=f"targets-{code}")


def _china_day(ms: int) -> date:
    return history.china_date(datetime.fromtimestamp(ms / 1000, UTC))


async def _from_history(
    redis: aioredis.Redis, prefix: str, code: str, deadlines: list[date], today: date, current: targets.Count
) -> tuple[targets.Pace | None, dict[date, targets.Count]]:
    """The recent pace (:func:`targets.baseline_date`) and the figures of passed deadline days, from the
    region's snapshots."""
    taken = await history.dates(redis, prefix, code)
    base = targets.baseline_date(taken, today)
    wanted = [d for d in deadlines if d < today and d in set(taken)] + ([base] if base else [])
    counts = {
        d: targets.Count(e["villages_total"], e["villages_reached"])
        for d, e in (await history.entries(redis, prefix, code, wanted)).items()
    }
    pace = None if base is None or base not in counts else targets.pace_since(base, counts[base], current, today)
    return pace, counts


# -- Laggards --------------------------------------------------------------------------------------


class LaggardsReport(TypedDict):
    code: str
    name: str | None
    level: str
    as_of: str | None
    stale: bool  # as in coverage documents: records wait and none was applied lately
    unit_level: str
    units_ranked: int
    units_without_villages: int
    limit: int
    laggards: list[targets.LaggardRow]
    definition: dict[str, Any]


_LAGGARD_COLUMNS: Final = (
    "rank",
    "code",
    "name",
    "level",
    "villages_total",
    "villages_reached",
    "coverage_rate",
    "gap",
    "villages_lapsed",
    "villages_active",
    "villages_with_station",
)


@router.get("/v1/laggards/{code}", response_model=LaggardsReport, responses=_ERRORS)
async def laggards(
    request: Request,
    who: Caller,
    flt: FilterParams,
    code: str = PathParam(
        description=REGION_DOC, examples=["CN", "14", "140322"], json_schema_extra=documented_pattern(REGION_PATTERN)
    ),
    level: Annotated[Level, Query(description="Which units under the region to rank; must be below it")] = "township",
    limit: Annotated[int, Query(ge=1, le=2500, description="How many units, lowest coverage first")] = 50,
) -> Response:
    """The units at ``level`` under the region ranked by coverage rate, lowest first (通报): ties by the gap
    (villages still to reach, more first), then by code. Units without villages are left out and counted."""
    code = region_code(code)
    ensure_in_scope(who, code)
    length = _below(code, level)
    settings, redis = settings_of(request), redis_of(request)
    prefix = settings.redis_key_prefix
    units = (await queries.regions_under(redis, prefix, [code], length))[code]
    units = [u for u in units if len(u) == length]
    many = await reader_of(request).figures([code, *units], flt, now_ms=now_ms(), lapse_days=settings.lapse_window_days)
    head = many.get(code)
    if head is None:
        raise unknown(code)
    present = [many[u] for u in units if u in many]
    rows, left_out = targets.rank_laggards(present, limit)
    body: LaggardsReport = {
        "code": code,
        "name": head["name"],
        "level": head["level"],
        "as_of": head["as_of"],
        "stale": documents_of(request).stale(),
        "unit_level": level,
        "units_ranked": len(present) - left_out,
        "units_without_villages": left_out,
        "limit": limit,
        "laggards": rows,
        "definition": {
            **targets.LAGGARDS_DEFINITION,
            "scope": flt.describe(),
            "lapse_window_days": settings.lapse_window_days,
            "registry_edition": await queries.registry_edition(redis, prefix),
        },
    }
    table = Table(_LAGGARD_COLUMNS, [[r[c] for c in _LAGGARD_COLUMNS] for r in rows])
    return respond(request, body, table=table, filename=f"laggards-{code}-{level}")


def _below(code: str, level: Level) -> int:
    """The code length of the units at ``level``; 400 unless they are below ``code``."""
    here = 0 if code == names.NATIONAL else len(code)
    if UNIT_LENGTH[level] <= here:
        below = [lv for lv, n in UNIT_LENGTH.items() if n > here]
        hint = f"choose one of: {', '.join(below)}" if below else f"for its villages see /v1/coverage/{code}/unreached"
        raise Problem(400, f"level={level} is not below {code} (a {_level_name(code)}); {hint}", type_="invalid-level")
    return UNIT_LENGTH[level]


def _level_name(code: str) -> str:
    return divisions.NATION if code == names.NATIONAL else divisions.level_of(code)


# -- History ---------------------------------------------------------------------------------------


class SeriesEntry(history.Entry):
    restated: history.Restated | None  # the figures as later corrections restate them; None: unchanged


HistoryReport = TypedDict(
    "HistoryReport",
    {
        "code": str,
        "name": str | None,
        "level": str,
        "from": str,
        "to": str,
        "series": list[SeriesEntry],
        "definition": dict[str, Any],
    },
)


_HISTORY_COLUMNS: Final = (
    "date",
    "villages_total",
    "villages_reached",
    "villages_active",
    "villages_lapsed",
    "villages_with_station",
    "coverage_rate",
    "as_of",
    "registry_edition",
)
_RESTATED_COLUMNS: Final = (
    "villages_reached",
    "villages_active",
    "villages_lapsed",
    "villages_with_station",
    "coverage_rate",
    "corrections",
)


@router.get("/v1/coverage/{code}/history", response_model=HistoryReport, responses=_ERRORS)
async def coverage_history(
    request: Request,
    who: Caller,
    code: str = PathParam(
        description=REGION_DOC, examples=["CN", "14", "140322"], json_schema_extra=documented_pattern(REGION_PATTERN)
    ),
    start: Annotated[
        str | None,
        Query(
            alias="from",
            description="First day, YYYY-MM-DD (default: 89 days before `to`)",
            json_schema_extra={"format": "date"},
        ),
    ] = None,
    end: Annotated[
        str | None,
        Query(
            alias="to",
            description="Last day, YYYY-MM-DD, included (default: today, China time)",
            json_schema_extra={"format": "date"},
        ),
    ] = None,
) -> Response:
    """The region's daily snapshots from ``from`` to ``to`` (both included; default the last 90 days), oldest
    first. Snapshots are taken once a day from LASTMILE_SNAPSHOT_HOUR (China Standard Time) by the worker, for any
    carrier and all villages only; days without a snapshot are left out."""
    code = region_code(code)
    ensure_in_scope(who, code)
    last = _day("to", end) if end is not None else _china_day(now_ms())
    first = _day("from", start) if start is not None else last - timedelta(days=DEFAULT_HISTORY_DAYS - 1)
    if first > last:
        raise Problem(400, f"from={first} is after to={last}", type_="invalid-date")
    if (last - first).days + 1 > MAX_HISTORY_DAYS:
        raise Problem(400, f"from..to spans more than {MAX_HISTORY_DAYS} days; ask in parts", type_="invalid-date")
    settings, redis = settings_of(request), redis_of(request)
    prefix = settings.redis_key_prefix
    name = await _region_name(redis, prefix, code)
    published = await history.series(redis, prefix, code, first, last)
    changes = await history.restatements(redis, prefix, code)
    series: list[SeriesEntry] = [{**e, "restated": history.restate(e, changes.get(e["date"]))} for e in published]
    body: HistoryReport = {
        "code": code,
        "name": name,
        "level": _level_name(code),
        "from": first.isoformat(),
        "to": last.isoformat(),
        "series": series,
        "definition": _history_definition(settings),
    }
    columns = (*_HISTORY_COLUMNS, *(f"restated_{c}" for c in _RESTATED_COLUMNS))
    rows = [[*(e[c] for c in _HISTORY_COLUMNS), *_restated_cells(e["restated"])] for e in series]
    table = Table(columns, rows)
    modified = await history.taken_at_ms(redis, prefix, [e["date"] for e in series])
    return respond(request, body, table=table, filename=f"history-{code}", last_modified_ms=modified)


def _restated_cells(restated: history.Restated | None) -> list[Any]:
    figures: dict[str, Any] = dict(restated) if restated is not None else {}
    return [figures.get(c) for c in _RESTATED_COLUMNS]


class DayFigures(history.Entry):
    code: str
    name: str | None
    level: str


class HistoryDay(TypedDict):
    code: str
    name: str | None
    level: str
    date: str
    figures: history.Entry | None
    children: list[DayFigures]
    definition: dict[str, Any]


_DAY_COLUMNS: Final = ("code", "name", "level", *_HISTORY_COLUMNS)


@router.get("/v1/coverage/{code}/history/{day}", response_model=HistoryDay, responses=_ERRORS)
async def coverage_history_day(
    request: Request,
    who: Caller,
    code: str = PathParam(
        description=REGION_DOC, examples=["CN", "14", "140322"], json_schema_extra=documented_pattern(REGION_PATTERN)
    ),
    day: str = PathParam(description="The day, YYYY-MM-DD", json_schema_extra={"format": "date"}),
    level: Annotated[
        Level | None, Query(description="Which units under the region to give (default: one level down)")
    ] = None,
) -> Response:
    """The region's snapshot of one day with its units' at ``level`` (default: its children; townships at
    most): a map as of that day in one request. ``figures`` is null and ``children`` empty when no snapshot
    was taken that day; a unit without one (added to the registry since) is left out."""
    code = region_code(code)
    ensure_in_scope(who, code)
    when = _day("day", day)
    # By default one level down; a township's villages have no snapshots of their own.
    here = 0 if code == names.NATIONAL else len(code)
    default = divisions.CHILD_LENGTH[here] if here < UNIT_LENGTH[divisions.TOWNSHIP] else None
    length = _below(code, level) if level is not None else default
    settings, redis = settings_of(request), redis_of(request)
    prefix = settings.redis_key_prefix
    name = await _region_name(redis, prefix, code)
    units: list[str] = []
    if length is not None:
        units = [u for u in (await queries.regions_under(redis, prefix, [code], length))[code] if len(u) == length]
    own, found = await history.day_of_units(redis, prefix, code, units, when)
    children: list[DayFigures] = [
        {**entry, "code": c, "name": n, "level": divisions.level_of(c)} for c, n, entry in found
    ]
    body: HistoryDay = {
        "code": code,
        "name": name,
        "level": _level_name(code),
        "date": when.isoformat(),
        "figures": own,
        "children": children,
        "definition": _history_definition(settings),
    }
    rows = [] if own is None else [[code, name, body["level"], *(own[c] for c in _HISTORY_COLUMNS)]]
    rows += [[ch[c] for c in _DAY_COLUMNS] for ch in children]
    modified = await history.taken_at_ms(redis, prefix, [when.isoformat()])
    return respond(
        request, body, table=Table(_DAY_COLUMNS, rows), filename=f"history-{code}-{when}", last_modified_ms=modified
    )


def _history_definition(settings: Settings) -> dict[str, Any]:
    return {
        "snapshot": f"the region's figures as the worker saw them when it took the day's snapshot, from "
        f"{settings.snapshot_hour:02d}:00 China Standard Time (LASTMILE_SNAPSHOT_HOUR), once per day",
        "scope": ALL.describe(),
        "lapse_window_days": settings.lapse_window_days,
        "missing_days": "days without a snapshot (no worker running after LASTMILE_SNAPSHOT_HOUR) are left out",
    }


def _day(name: str, text: str) -> date:
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise Problem(400, f"{name}={text!r} is not a date YYYY-MM-DD", type_="invalid-date") from None


async def _region_name(redis: aioredis.Redis, prefix: str, code: str) -> str | None:
    """The region's name; 404 when the code is not in the registry."""
    if code == names.NATIONAL:
        return queries.NATIONAL_NAME
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(names.shard_key(prefix, code, names.REG_KIND), code)
        pipe.hget(names.key(prefix, names.REG_UNIT, code), unit.NAME)
        kind, name = await pipe.execute()
    if kind is None:
        raise unknown(code)
    return None if name is None else str(name)


# -- Subsidies -------------------------------------------------------------------------------------


class UnitFigures(TypedDict):
    code: str
    name: str | None
    parcels: int
    villages_total: int
    villages_reached: int
    coverage_rate: float | None
    villages_with_station: int


class SubsidyReport(TypedDict):
    year: int
    county: UnitFigures
    townships: list[UnitFigures]
    rules_source: str
    rules_description: str
    rules: list[subsidies.RuleResult]
    total_yuan: int
    definition: dict[str, str | None]


_SUBSIDY_COLUMNS: Final = ("rule_id", "rule_name", "level", "code", "name", "eligible", "amount_yuan", "reason")

SUBSIDY_DEFINITION: Final = {
    "parcels": "parcel volume of the year (China Standard Time): delivered + picked_up + collected events "
    "at the unit's villages and townships.",
    "villages_with_station": "administrative villages where at least one station_id has been reported, so far "
    "(一村一站); villages_reached likewise counts every village reached so far, not only in the year.",
    "eligible": "every condition of the rule holds for the unit; reason names the failed conditions with "
    "the figures, or lists the figures that qualified it.",
    "amount_yuan": "per unit: the rule's amount when eligible, else 0; total_yuan sums every rule.",
}


@router.get("/v1/reports/{county}/subsidies", response_model=SubsidyReport, responses=_ERRORS)
async def subsidy_report(
    request: Request,
    who: Caller,
    year: Annotated[int, Query(ge=2000, le=2100, description="Calendar year (China Standard Time) of the volumes")],
    county: str = PathParam(
        description=COUNTY_DOC, examples=["140322"], json_schema_extra=documented_pattern(COUNTY_PATTERN)
    ),
) -> Response:
    """The county's 快递进村 subsidy report for a year: parcel volume of the county and each township, villages
    with a station (一村一站), and for each rule of LASTMILE_SUBSIDY_RULES_FILE (default: 驿城区 2021) which units are
    eligible, why or why not, and the amounts."""
    if not (divisions.is_region_code(county) and len(county) == 6):
        raise invalid(county, "a 6-digit county code")
    ensure_in_scope(who, county)
    settings, redis = settings_of(request), redis_of(request)
    units = await _county_units(redis, settings.redis_key_prefix, county, year)
    if units is None:
        raise unknown(county)
    rules, source = _rules_of(request)
    results = subsidies.evaluate(rules, units, year)
    county_unit, townships = units[0], [u for u in units if u.level == subsidies.TOWNSHIP]
    body: SubsidyReport = {
        "year": year,
        "county": _unit_figures(county_unit),
        "townships": [_unit_figures(t) for t in townships],
        "rules_source": source,
        "rules_description": rules.description,
        "rules": results,
        "total_yuan": sum(r["total_yuan"] for r in results),
        "definition": {
            **SUBSIDY_DEFINITION,
            "registry_edition": await queries.registry_edition(redis, settings.redis_key_prefix),
        },
    }
    table = Table(
        _SUBSIDY_COLUMNS,
        [
            [r["id"], r["name"], r["level"], u["code"], u["name"], u["eligible"], u["amount_yuan"], u["reason"]]
            for r in results
            for u in r["units"]
        ],
    )
    return respond(request, body, table=table, filename=f"subsidies-{county}-{year}")


def _unit_figures(u: subsidies.Unit) -> UnitFigures:
    return {
        "code": u.code,
        "name": u.name,
        "parcels": u.parcels,
        "villages_total": u.villages_total,
        "villages_reached": u.villages_reached,
        "coverage_rate": queries.coverage_rate(u.villages_reached, u.villages_total),
        "villages_with_station": u.villages_with_station,
    }


async def _county_units(redis: aioredis.Redis, prefix: str, county: str, year: int) -> list[subsidies.Unit] | None:
    """The county, its townships and its administrative villages with their figures for ``year``; the county
    first. None when the county is not in the registry. Three round trips, one per level."""
    volume = field.VOLUME + str(year)
    region_fields = [field.VILLAGES_TOTAL, field.VILLAGES_REACHED, field.VILLAGES_WITH_STATION, volume]

    async def regions(codes: list[str]) -> list[Any]:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hmget(names.shard_key(prefix, county, names.REG_KIND), codes)  # all in the county's province
            for c in codes:
                pipe.hget(names.key(prefix, names.REG_UNIT, c), unit.NAME)
                pipe.hmget(names.key(prefix, names.REGION, c), region_fields)
                pipe.smembers(names.key(prefix, names.REG_CHILDREN, c))
            return list(await pipe.execute())

    def region_unit(code: str, level: str, name: Any, values: list[Any]) -> subsidies.Unit:
        total, reached, stations, parcels = (int(v or 0) for v in values)
        return subsidies.Unit(code, name, level, parcels, total, reached, stations)

    (kind,), name, values, children = await regions([county])
    if kind is None:
        return None
    out = [region_unit(county, subsidies.COUNTY, name, values)]
    townships = sorted(str(c) for c in children)
    village_codes: list[str] = []
    if townships:
        _, *rest = await regions(townships)
        for i, t in enumerate(townships):
            t_name, t_values, t_children = rest[3 * i : 3 * i + 3]
            out.append(region_unit(t, subsidies.TOWNSHIP, t_name, t_values))
            village_codes.extend(str(c) for c in t_children)
    village_codes.sort()
    if village_codes:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hmget(names.shard_key(prefix, county, names.REG_KIND), village_codes)
            for v in village_codes:
                pipe.hget(names.key(prefix, names.REG_UNIT, v), unit.NAME)
                pipe.hmget(names.key(prefix, names.LOCATION, v), [field.REACHED, volume])
                pipe.scard(names.key(prefix, names.STATIONS, v))
            kinds, *rest = await pipe.execute()
        for i, (v, v_kind) in enumerate(zip(village_codes, kinds, strict=True)):
            if v_kind != divisions.KIND_VILLAGE:
                continue
            v_name, (reached, parcels), stations = rest[3 * i : 3 * i + 3]
            out.append(
                subsidies.Unit(
                    v,
                    v_name,
                    subsidies.VILLAGE,
                    int(parcels or 0),
                    1,
                    1 if reached == "1" else 0,
                    1 if stations else 0,
                    int(stations),
                )
            )
    return out
