"""The administrative villages of a region that are not reached (or, on request, lapsed), page by page.

Villages come in code order, and the walk never loads a whole province: the townships' own counts say which to open,
and whether anything follows the page. Cursors are opaque to clients and checked here, since they come back.
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast

import orjson
import redis.asyncio as aioredis
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12 (response models)

from coverage_service import fold
from coverage_service.readmodel import queries
from coverage_service.readmodel.filters import Filter
from lastmile import divisions, names, scan
from lastmile.names import field, unit

UNREACHED: Final = "unreached"
LAPSED: Final = "lapsed"
COLUMNS: Final = ("code", "name", "township", "township_name", "county", "status", "last_reach_at", "population")
TOWNSHIPS_PER_ROUND: Final = 256  # townships whose counts are read in one pipeline
_CURSOR_MAX: Final = 200
_AFTER: Final = "after"


class Row(TypedDict):
    code: str
    name: str | None
    township: str
    township_name: str | None
    county: str
    status: str  # "unreached" or "lapsed"
    last_reach_at: str | None  # in the scope; null if never reached
    population: int | None


def cells(row: Row) -> list[object]:
    """A row's values in the order of COLUMNS (the CSV export)."""
    return [
        row["code"],
        row["name"],
        row["township"],
        row["township_name"],
        row["county"],
        row["status"],
        row["last_reach_at"],
        row["population"],
    ]


class Page(TypedDict):
    code: str
    name: str | None
    level: str
    scope: queries.FilterDoc
    lapse_window_days: int
    registry_edition: str | None
    items: list[Row]
    next_cursor: str | None
    count: int  # rows in this page


class InvalidCursor(ValueError):
    """A cursor this service did not hand out for this region."""


def encode_cursor(after: str) -> str:
    """The last village code of a page, as base64url JSON: opaque to clients, and checked when it comes back."""
    return base64.urlsafe_b64encode(orjson.dumps({_AFTER: after})).decode().rstrip("=")


def decode_cursor(text: str, region: str) -> str:
    """The village code a cursor of region ``region`` points after; InvalidCursor says what is wrong."""
    if len(text) > _CURSOR_MAX or not text.isascii():
        raise InvalidCursor("cursor is not one this service handed out")
    try:
        body = orjson.loads(base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True))
    except (binascii.Error, ValueError):
        raise InvalidCursor("cursor is not one this service handed out (not base64url JSON)") from None
    after = body.get(_AFTER) if isinstance(body, dict) else None
    if not isinstance(after, str) or not divisions.is_village_code(after) or set(body) != {_AFTER}:
        raise InvalidCursor("cursor is not one this service handed out")
    if not after.startswith(region):
        raise InvalidCursor(f"cursor belongs to another region's list ({after[:9]}), not {region}'s")
    return after


@dataclass(frozen=True, slots=True)
class _Township:
    code: str
    name: str | None
    candidates: int  # unreached (+ lapsed) villages its counts promise


async def unreached(
    redis: aioredis.Redis,
    prefix: str,
    code: str,
    flt: Filter,
    *,
    lapsed: bool,
    after: str | None,
    limit: int,
    now_ms: int,
    lapse_days: int,
) -> Page | None:
    """One page of region ``code``'s (2/4/6/9 digits) villages in scope ``flt`` that are not reached, and
    with ``lapsed`` also those not reached within the lapse window, after village ``after``; None if the
    region is not in the registry."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(names.shard_key(prefix, code, names.REG_KIND), code)
        pipe.hget(names.key(prefix, names.REG_UNIT, code), unit.NAME)
        kind, name = await pipe.execute()
    if kind is None or kind == divisions.KIND_REMOVED:
        return None
    townships = (await queries.regions_under(redis, prefix, [code], 9))[code]
    if after is not None:
        townships = [t for t in townships if t >= after[:9]]
    walk = _Walk(redis, prefix, flt, lapsed=lapsed, cutoff_ms=fold.lapse_window(now_ms, lapse_days).start_ms)
    items, more = await walk.page(townships, after, limit)
    return {
        "code": code,
        "name": name,
        "level": divisions.level_of(code),
        "scope": cast(queries.FilterDoc, flt.describe()),
        "lapse_window_days": lapse_days,
        "registry_edition": await queries.registry_edition(redis, prefix),
        "items": items,
        "next_cursor": encode_cursor(items[-1]["code"]) if more and items else None,
        "count": len(items),
    }


class _Walk:
    """The townships in code order, opening only those whose own counts (villages_total - villages_reached, plus
    villages_reached - active from the lapse index for lapsed ones) promise a village. The same counts tell whether
    anything follows the page, so ``next_cursor`` is null exactly on the last page (unless an event or a registry
    load lands between two pages)."""

    def __init__(self, redis: aioredis.Redis, prefix: str, flt: Filter, *, lapsed: bool, cutoff_ms: int) -> None:
        self.redis, self.prefix, self.sc, self.lapsed, self.cutoff_ms = redis, prefix, flt, lapsed, cutoff_ms

    async def page(self, townships: Sequence[str], after: str | None, limit: int) -> tuple[list[Row], bool]:
        """Up to ``limit`` rows after ``after``, and whether more follow."""
        items: list[Row] = []
        pending: deque[_Township] = deque()
        rest = list(townships)
        while True:
            if not pending:
                if not rest:
                    return items, False
                chunk, rest = rest[:TOWNSHIPS_PER_ROUND], rest[TOWNSHIPS_PER_ROUND:]
                pending.extend(t for t in await self._counts(chunk) if t.candidates > 0)
                continue
            if len(items) >= limit:
                return items, True
            # Open as few townships as the counts say will fill the page.
            batch = [pending.popleft()]
            promised = batch[0].candidates
            while pending and promised < limit - len(items):
                batch.append(pending.popleft())
                promised += batch[-1].candidates
            items.extend(await self._villages(batch, after))
            if len(items) > limit:
                return items[:limit], True

    async def _counts(self, townships: Sequence[str]) -> list[_Township]:
        flt = self.sc
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in townships:
                pipe.hget(names.key(self.prefix, names.REG_UNIT, t), unit.NAME)
                pipe.hmget(names.key(self.prefix, names.REGION, t), [flt.total_field, flt.reached_field])
                if self.lapsed:
                    pipe.zcount(
                        names.key(self.prefix, names.REACH_INDEX, t + flt.index_suffix()), self.cutoff_ms, "+inf"
                    )
            replies = iter(await pipe.execute())
        out = []
        for t in townships:
            name, (total, reached) = next(replies), next(replies)
            candidates = int(total or 0) - int(reached or 0)
            if self.lapsed:
                candidates += int(reached or 0) - int(next(replies))
            out.append(_Township(t, name, candidates))
        return out

    async def _villages(self, townships: Sequence[_Township], after: str | None) -> list[Row]:
        """The rows of these townships' villages after ``after``, in code order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in townships:
                pipe.smembers(names.key(self.prefix, names.REG_CHILDREN, t.code))
            members = await pipe.execute()
        codes = sorted(c for m in members for c in m if after is None or c > after)
        if not codes:
            return []
        dim = self.sc.dim
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(names.shard_key(self.prefix, codes[0], names.REG_KIND), codes)  # one region's: one province
            for c in codes:
                pipe.hmget(names.key(self.prefix, names.REG_UNIT, c), [unit.NAME, unit.POPULATION])
                pipe.hmget(
                    names.key(self.prefix, names.LOCATION, c),
                    [field.REACHED + dim, field.LAST_REACH_MS + dim, field.LAST_REACH_MS],
                )
            kinds, *rest = await pipe.execute()
        township_names = {t.code: t.name for t in townships}
        rows: list[Row] = []
        for i, (c, kind) in enumerate(zip(codes, kinds, strict=True)):
            (name, population), (reached, last_ms, any_last_ms) = rest[2 * i], rest[2 * i + 1]
            # A reach flag without its own last-reach time (an older read model) falls back to any carrier's.
            last = (last_ms or any_last_ms) if reached == "1" else None
            status = self._status(kind, population, last)
            if status is not None:
                rows.append(
                    {
                        "code": c,
                        "name": name,
                        "township": c[:9],
                        "township_name": township_names[c[:9]],
                        "county": c[:6],
                        "status": status,
                        "last_reach_at": None if last is None else scan.format_ms(int(last)),
                        "population": None if population is None else int(population),
                    }
                )
        return rows

    def _status(self, kind: str | None, population: str | None, last_ms: str | None) -> str | None:
        """``unreached``, ``lapsed`` or None (not listed) for one village-level unit; ``last_ms`` is its last
        reach in the scope, None if never reached in it."""
        tier = self.sc.min_population
        if kind != divisions.KIND_VILLAGE or (tier is not None and (population is None or int(population) < tier)):
            return None
        if last_ms is None:
            return UNREACHED
        if self.lapsed and int(last_ms) < self.cutoff_ms:
            return LAPSED
        return None
