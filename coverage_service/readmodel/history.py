"""Daily snapshots of every region's figures, and reading them back as a series.

The read model only knows the present; regulators also need the past: whether covered villages stay covered (防回退),
the pace of progress, and a milestone's figures on its deadline day. The layout and rules: docs/read-model.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from typing_extensions import TypedDict

from coverage_service.fold import CHINA_STANDARD_TIME
from coverage_service.readmodel import durable, queries
from coverage_service.readmodel.filters import ALL
from lastmile import names, redis_client
from lastmile.settings import Settings, SettingsError

log = logging.getLogger("lastmile.history")

# An entry is a compact JSON array in this order, then the registry edition it was taken on (absent in entries taken
# before editions were recorded); villages_lapsed and coverage_rate are derived when read.
ENTRY_FIELDS: Final = ("villages_total", "villages_reached", "villages_active", "villages_with_station", "as_of")
CHUNK: Final = 2000  # regions per figures_many call (one MULTI/EXEC each)
CHECK_INTERVAL_S: Final = 60.0  # how often the worker looks at the clock
TOWNSHIP_LENGTH: Final = 9


class Entry(TypedDict):
    date: str
    villages_total: int
    villages_reached: int
    villages_active: int
    villages_lapsed: int
    villages_with_station: int
    coverage_rate: float | None
    as_of: str | None
    registry_edition: str | None  # the edition the figures were computed on: a change shows in a series


@dataclass(frozen=True, slots=True)
class Taken:
    day: date
    regions: int  # regions in the snapshot
    written: int  # entries this run wrote (0 when the day was already complete)
    already: bool  # the day was complete before this run


def china_date(moment: datetime) -> date:
    return moment.astimezone(CHINA_STANDARD_TIME).date()


def today() -> date:
    return china_date(datetime.now(UTC))


def check_hour(hour: int) -> int:
    if not 0 <= hour <= 23:
        raise SettingsError(f"LASTMILE_SNAPSHOT_HOUR: {hour} is not an hour 0-23 (China Standard Time)")
    return hour


def due(now: datetime, hour: int) -> date | None:
    """The date whose snapshot is due at ``now``: today (CST) once the hour is reached, else None."""
    local = now.astimezone(CHINA_STANDARD_TIME)
    return local.date() if local.hour >= hour else None


def encode(figures: queries.Figures, edition: str | None = None) -> str:
    return orjson.dumps([*(figures[f] for f in ENTRY_FIELDS), edition]).decode()


def decode(day: str, text: str) -> Entry:
    values = orjson.loads(text)
    total, reached, active, stations, as_of = values[: len(ENTRY_FIELDS)]
    edition = values[len(ENTRY_FIELDS)] if len(values) > len(ENTRY_FIELDS) else None
    return {
        "date": day,
        "villages_total": total,
        "villages_reached": reached,
        "villages_active": active,
        "villages_lapsed": reached - active,
        "villages_with_station": stations,
        "coverage_rate": queries.coverage_rate(reached, total),
        "as_of": as_of,
        "registry_edition": edition or None,
    }


# -- Taking --------------------------------------------------------------------------------------


async def region_codes(redis: aioredis.Redis, prefix: str) -> list[str]:
    """Every region of the registry down to townships, the nation first: one round trip per level."""
    out, level = [names.NATIONAL], [names.NATIONAL]
    while level:
        async with redis.pipeline(transaction=False) as pipe:
            for c in level:
                pipe.smembers(names.key(prefix, names.REG_CHILDREN, c))
            children = sorted(str(m) for members in await pipe.execute() for m in members)
        level = [c for c in children if len(c) <= TOWNSHIP_LENGTH]
        out.extend(level)
        if level and len(level[0]) == TOWNSHIP_LENGTH:
            break
    return out


async def is_taken(redis: aioredis.Redis, prefix: str, day: date) -> bool:
    return bool(await redis.hexists(names.key(prefix, names.HISTORY_DAYS), day.isoformat()))


async def take(
    redis: aioredis.Redis, prefix: str, day: date, *, now_ms: int, lapse_days: int, chunk: int = CHUNK
) -> Taken:
    """The snapshot of every region labelled ``day``, unless that day's snapshot is complete.

    Idempotent: each entry is written only if absent (HSETNX) and the day's completion marker last, so a second run
    changes nothing and a run interrupted part-way is completed by the next without touching what it wrote. Only
    the any-carrier, all-villages scope is kept: one entry per region and day keeps the history small.
    """
    days_key, label = names.key(prefix, names.HISTORY_DAYS), day.isoformat()
    marker = await redis.hget(days_key, label)
    if marker is not None:
        return Taken(day, int(orjson.loads(marker).get("regions", 0)), 0, already=True)
    codes = await region_codes(redis, prefix)
    edition = await queries.registry_edition(redis, prefix)
    reader = queries.Reader.on(redis, prefix)
    written = 0
    for i in range(0, len(codes), chunk):
        figures = await reader.figures(codes[i : i + chunk], ALL, now_ms=now_ms, lapse_days=lapse_days)
        async with redis.pipeline(transaction=False) as pipe:
            for code, f in figures.items():
                pipe.hsetnx(names.key(prefix, names.HISTORY, code), label, encode(f, edition))
            written += sum(int(r) for r in await pipe.execute())
    done = {"taken_at_ms": now_ms, "regions": len(codes)}
    await redis.hsetnx(days_key, label, orjson.dumps(done).decode())
    # A past day's figures cannot be folded again from the topic: a restart must not lose them.
    await durable.saved(redis)
    return Taken(day, len(codes), written, already=False)


async def take_if_due(redis: aioredis.Redis, settings: Settings, now: datetime) -> Taken | None:
    """What the worker's timer calls each minute: today's snapshot once LASTMILE_SNAPSHOT_HOUR has come."""
    day = due(now, settings.snapshot_hour)
    if day is None or await is_taken(redis, settings.redis_key_prefix, day):
        return None
    now_ms = int(now.timestamp() * 1000)
    taken = await take(redis, settings.redis_key_prefix, day, now_ms=now_ms, lapse_days=settings.lapse_window_days)
    log.info(
        "history snapshot taken", extra={"date": day.isoformat(), "regions": taken.regions, "written": taken.written}
    )
    return taken


async def take_now(settings: Settings, day: date | None = None) -> Taken:
    """``lastmile snapshot``: the current figures, labelled today (CST) or ``day``, with its own client."""
    client = redis_client.connect(settings)
    try:
        now = datetime.now(UTC)
        label = day or china_date(now)
        return await take(
            client,
            settings.redis_key_prefix,
            label,
            now_ms=int(now.timestamp() * 1000),
            lapse_days=settings.lapse_window_days,
        )
    finally:
        await client.aclose()


# -- Reading -------------------------------------------------------------------------------------


class Restated(TypedDict):
    """A snapshot's figures as corrections made after it restate them (docs/corrections.md#restatements)."""

    villages_reached: int
    villages_active: int
    villages_lapsed: int
    villages_with_station: int
    coverage_rate: float | None
    corrections: int  # how many corrections changed the day's figures


async def restatements(redis: aioredis.Redis, prefix: str, code: str) -> dict[str, dict[str, int]]:
    """Per day, how corrections changed the region's published snapshot (figure -> change); the nation's are its
    provinces' summed, as its figures are."""
    if code == names.NATIONAL:
        provinces = sorted(str(c) for c in await redis.smembers(names.key(prefix, names.REG_CHILDREN, code)))
    else:
        provinces = [code]
    async with redis.pipeline(transaction=False) as pipe:
        for c in provinces:
            pipe.hgetall(names.key(prefix, names.RESTATED, c))
        replies = await pipe.execute()
    out: dict[str, dict[str, int]] = {}
    for reply in replies:
        for name, n in reply.items():
            label, figure = str(name).split(names.restated.SEP, 1)
            day = out.setdefault(label, {})
            day[figure] = day.get(figure, 0) + int(n)
    return out


def restate(entry: Entry, changes: dict[str, int] | None) -> Restated | None:
    """The entry's figures with the corrections' changes; None when no correction changed them."""
    r = names.restated
    if not changes or not any(n for figure, n in changes.items() if figure != r.CORRECTIONS):
        return None
    reached = entry["villages_reached"] + changes.get(r.VILLAGES_REACHED, 0)
    active = entry["villages_active"] + changes.get(r.VILLAGES_ACTIVE, 0)
    return {
        "villages_reached": reached,
        "villages_active": active,
        "villages_lapsed": reached - active,
        "villages_with_station": entry["villages_with_station"] + changes.get(r.VILLAGES_WITH_STATION, 0),
        "coverage_rate": queries.coverage_rate(reached, entry["villages_total"]),
        "corrections": changes.get(r.CORRECTIONS, 0),
    }


async def series(redis: aioredis.Redis, prefix: str, code: str, start: date, end: date) -> list[Entry]:
    """The region's snapshots from ``start`` to ``end`` (both included), oldest first; days without one
    are left out."""
    labels = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    values: list[Any] = await redis.hmget(names.key(prefix, names.HISTORY, code), labels)
    return [decode(d, v) for d, v in zip(labels, values, strict=True) if v is not None]


async def taken_at_ms(redis: aioredis.Redis, prefix: str, days: list[str]) -> int | None:
    """When the newest of these days' snapshots was completed (ms), for Last-Modified; None if none was."""
    if not days:
        return None
    markers: list[Any] = await redis.hmget(names.key(prefix, names.HISTORY_DAYS), days)
    times = [int(orjson.loads(m).get("taken_at_ms", 0)) for m in markers if m is not None]
    return max(times, default=None)


async def dates(redis: aioredis.Redis, prefix: str, code: str) -> list[date]:
    """The dates the region has a snapshot for, oldest first."""
    labels: list[Any] = await redis.hkeys(names.key(prefix, names.HISTORY, code))
    return sorted(date.fromisoformat(d) for d in labels)


async def entries(redis: aioredis.Redis, prefix: str, code: str, days: list[date]) -> dict[date, Entry]:
    if not days:
        return {}
    labels = [d.isoformat() for d in days]
    values: list[Any] = await redis.hmget(names.key(prefix, names.HISTORY, code), labels)
    return {d: decode(label, v) for d, label, v in zip(days, labels, values, strict=True) if v is not None}


async def day_of_units(
    redis: aioredis.Redis, prefix: str, code: str, units: Sequence[str], day: date
) -> tuple[Entry | None, list[tuple[str, str | None, Entry]]]:
    """The snapshot of ``day`` of the region and of ``units`` (regions under it), as (code, name, entry) in the
    order given: a map as of that day, in one round trip. Units without a snapshot that day (villages, units
    added since) are left out."""
    label = day.isoformat()
    async with redis.pipeline(transaction=False) as pipe:
        for c in (code, *units):
            pipe.hget(names.key(prefix, names.HISTORY, c), label)
        for c in units:
            pipe.hget(names.key(prefix, names.REG_UNIT, c), names.unit.NAME)
        replies = await pipe.execute()
    own, values, found = replies[0], replies[1 : len(units) + 1], replies[len(units) + 1 :]
    out = [
        (c, None if n is None else str(n), decode(label, v))
        for c, v, n in zip(units, values, found, strict=True)
        if v is not None
    ]
    return (None if own is None else decode(label, own)), out
