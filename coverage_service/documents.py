"""The coverage API's hot documents, read fast: a region's coverage report and a village's detail.

Each document is read with one call of ``documents.lua``, which answers one JSON string: one round trip
and one reply to parse, where a client pipeline costs the API a parsed reply per field. The figures and
their rules are those of :mod:`coverage_service.views` and :mod:`coverage_service.breakdown` (the tests hold
the two to the same answers); the builders below share their helpers.

- A **township or county** report is one script call, so its figures are of one moment of the read model:
  the region's hash, its children's, and the lapse-index counts of the region and its children.
- A **region above the counties** (the nation, a province, a city) counts its active villages over every
  county below it, per dimension of its breakdown: the nation's report needs up to some 50,000 index counts.
  Those counts are made for every county at once (:class:`Actives`: only below the cities and provinces that
  have reached a village in the dimension, in calls of a few milliseconds each, so Redis never stops for long),
  kept for the figures' max age, and summed for each region; the region's own hashes are read after them, so
  ``villages_lapsed`` = reached − active is never negative. Each time the counts are made, the reports of the
  larger regions asked for lately are made again with them, so requests for those do not wait.

Reports are kept in a :class:`~coverage_service.cache.FigureCache` for COVERAGE_FIGURES_MAX_AGE_SECONDS,
counted from their oldest read; village details are read afresh every time (one cheap call).
"""

from __future__ import annotations

import asyncio
import logging
import string
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, cast

import orjson
import redis.asyncio as aioredis

from coverage_service import breakdown, negotiation, resp, views
from coverage_service.breakdown import ANY_CARRIER, Breakdown, CoverageReport
from coverage_service.cache import FigureCache
from coverage_service.representation import Rendered, Table
from coverage_service.scope import ALL, Scope
from lastmile import divisions, names
from lastmile.names import field as fld

log = logging.getLogger("lastmile.coverage.documents")

SCRIPT: Final = "documents.lua"
COUNTIES_PER_CALL: Final = 1024  # counties offered to one `actives` call ...
CALL_BUDGET_US: Final = 2000  # ... which stops after about this long, so Redis never stops long for it
REFRESH_AT: Final = 0.5  # the county counts are made again in the background from this share of the max age at most
REFRESH_MARGIN_S: Final = 0.05
REBUILD_ASKED_WITHIN_S: Final = 10.0  # reports of larger regions asked for this recently are made with each count
REBUILD_AT_ONCE: Final = 8

TABLE_COLUMNS: Final = (
    "code", "name", "level", "villages_total", "villages_reached", "villages_active", "villages_lapsed",
    "villages_with_station", "coverage_rate", "as_of",
)  # fmt: skip


def load_script(prefix: str) -> str:
    text = resources.files("coverage_service").joinpath(SCRIPT).read_text(encoding="utf-8")
    return string.Template(text).substitute(
        names.lua_names(prefix), meta_loaded_at=names.meta.LOADED_AT, unit_name=names.unit.NAME
    )


def coverage_table(body: Mapping[str, Any]) -> Table:
    """The CSV form of a coverage report: the region itself first, so its totals travel with the file."""
    rows = [body, *body["children"]]
    return Table(TABLE_COLUMNS, [[row[c] for c in TABLE_COLUMNS] for row in rows])


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


def _data_time(raw: Mapping[str, Any]) -> int | None:
    """When the read model last changed (as :func:`coverage_service.representation.data_time_ms`)."""
    applied, loaded = _none(raw.get("applied_at")), _none(raw.get("loaded_at"))
    times = [t for t in (None if applied is None else int(applied), negotiation.iso_ms(loaded)) if t is not None]
    return max(times) if times else None


@dataclass(frozen=True)
class Tree:
    """The registry above the counties, as of one registry load."""

    loaded_at: str | None
    children: dict[str, list[str]]  # parent (CN, 2 or 4 digits) -> sorted children
    counties: frozenset[str]  # the units of 6 digits or more below them
    counties_sorted: list[str]
    parent: dict[str, str]  # every unit below the nation -> the region above it

    @classmethod
    def of(cls, loaded_at: str | None, raw: Mapping[str, Any]) -> Tree:
        children = {str(k): [str(c) for c in _list(v)] for k, v in raw.items()}
        parent = {c: p for p, kids in children.items() for c in kids}
        counties = sorted(c for c in parent if len(c) >= 6)
        return cls(loaded_at, children, frozenset(counties), counties, parent)


class Actives:
    """Active villages of every county, per dimension, at one moment, with their sums for the larger regions."""

    def __init__(
        self, born: float, cutoff_ms: int, tree: Tree, dims: list[str], counts: dict[str, dict[int, int]]
    ) -> None:
        self.born = born  # monotonic time of the first read
        self.cutoff_ms = cutoff_ms
        self.tree = tree
        self.dims = dims  # dimension suffixes ('' any carrier, '|carrier:sf' ...): the columns below
        self.columns = {dim: i for i, dim in enumerate(dims)}
        # county -> column -> count (above 0 only), and the same summed for every region above the counties
        self.counts: dict[str, dict[int, int]] = dict(counts)
        parent = tree.parent
        for county, columns in counts.items():
            region = parent.get(county)
            while region is not None:
                summed = self.counts.setdefault(region, {})
                for column, n in columns.items():
                    summed[column] = summed.get(column, 0) + n
                region = parent.get(region)

    def of(self, code: str) -> dict[int, int] | None:
        """Counts per column of a region (``CN``, 2, 4 or 6+ digits); None if these counts do not know it."""
        found = self.counts.get(code)
        if found is not None:
            return found
        if code in self.tree.counties or code in self.tree.children:
            return _NOTHING
        return None

    def count(self, code: str, dim: str) -> int:
        """Active villages of a region in a dimension; :class:`Stale` when these counts do not know either."""
        counts = self.of(code)
        column = self.columns.get(dim)
        if counts is None or column is None:
            raise Stale
        return counts.get(column, 0)


_NOTHING: Final[dict[int, int]] = {}


class Stale(Exception):
    """The county counts do not cover what a region's hashes name (a registry load or a new carrier since)."""


class Documents:
    """Reads the documents for one app: its Redis client, key prefix, lapse window and caches."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        lapse_ms: int,
        max_age_s: float,
        fast: resp.RespClient | None = None,
        bulk: resp.RespClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.redis, self.prefix, self.lapse_ms = redis, prefix, lapse_ms
        self.clock, self.wall_ms = clock, wall_ms
        self.max_age_s = max_age_s
        self._tree: Tree | None = None
        self._asked: dict[Scope, dict[str, float]] = {}  # larger regions' reports asked for, and when
        self._rebuilding: set[asyncio.Task[None]] = set()
        text = load_script(prefix)
        self._script: Callable[..., Awaitable[Any]]
        self._bulk: Callable[..., Awaitable[Any]]
        if fast is not None:  # run on the pipelining clients, loaded (SCRIPT LOAD) through redis-py
            self._script = resp.Script(fast, text, load=lambda: redis.script_load(text))
            self._bulk = resp.Script(bulk or fast, text, load=lambda: redis.script_load(text))
        else:
            script = redis.register_script(text)
            self._script = self._bulk = lambda *args: script(args=list(args))
        self.reports: FigureCache[tuple[str, Scope], Rendered | None] = FigureCache(max_age_s, clock=clock)
        self.actives: FigureCache[Scope, Actives] = FigureCache(
            max_age_s, refresh_after_s=max_age_s * REFRESH_AT, clock=clock
        )

    async def close(self) -> None:
        for task in self._rebuilding:
            task.cancel()
        await asyncio.gather(self.reports.close(), self.actives.close(), *self._rebuilding, return_exceptions=True)

    async def _call(self, *args: str | int) -> Any:
        return orjson.loads(await self._script(*args))

    # -- a region's report --------------------------------------------------------------------------------

    async def region(self, code: str, sc: Scope = ALL) -> Rendered | None:
        """The coverage report of ``code`` (``CN`` or 2/4/6/9 digits) in scope ``sc``, rendered; None if the
        registry does not have it. Cached: at most the figures' max age old."""
        if code != names.NATIONAL and len(code) >= 6:
            return await self.reports.get((code, sc), lambda: self._indexed(code, sc))
        self._asked.setdefault(sc, {})[code] = self.clock()
        return await self.reports.get((code, sc), lambda: self._upper_report(code, sc))

    async def _indexed(self, code: str, sc: Scope) -> tuple[Rendered | None, float]:
        """A township's or a county's report: one call, one moment of the read model."""
        born, now = self.clock(), self.wall_ms()
        cutoff = now - self.lapse_ms
        raw = await self._call("region", code, cutoff, sc.dim, sc.tier, _want_dims(sc), "1")
        if not _known(code, raw):
            return None, born
        counts = {str(d): int(n) for d, n in _list(raw.get("counts"))}
        rows = _list(raw["children"])
        children = village_rows(rows, sc, cutoff) if len(code) == 9 else region_rows(rows, lambda row: int(row[7]))
        body = report(code, sc, raw, counts.__getitem__, children, self.lapse_ms)
        return self._rendered(code, body, raw), born

    async def _upper_report(self, code: str, sc: Scope) -> tuple[Rendered | None, float]:
        actives = await self.actives.get(sc, lambda: self._actives(sc))
        return await self._upper_from(code, sc, actives)

    async def _upper_from(self, code: str, sc: Scope, actives: Actives) -> tuple[Rendered | None, float]:
        """A larger region's report from the county counts (read first) and its hashes (read now)."""
        raw = await self._call("region", code, actives.cutoff_ms, sc.dim, sc.tier, _want_dims(sc), "0")
        if not _known(code, raw):
            return None, actives.born
        upper = self._upper(code, sc, raw, actives)
        if upper is None:  # the registry or the carriers changed since the counts were made: read it all now
            return await self._reference(code, sc), self.clock()
        return self._rendered(code, upper, raw), actives.born

    async def _rebuild(self, sc: Scope, actives: Actives) -> None:
        """With new county counts, the reports of the larger regions asked for lately, made at once: the
        requests for them find fresh reports instead of waiting for one."""
        now = self.clock()
        asked = self._asked.get(sc, {})
        for code in [c for c, at in asked.items() if now - at > REBUILD_ASKED_WITHIN_S]:
            del asked[code]
        if not asked:
            self._asked.pop(sc, None)
        codes = list(asked)
        for start in range(0, len(codes), REBUILD_AT_ONCE):
            made = await asyncio.gather(
                *(self._upper_from(c, sc, actives) for c in codes[start : start + REBUILD_AT_ONCE])
            )
            for code, (rendered, born) in zip(codes[start : start + REBUILD_AT_ONCE], made, strict=True):
                self.reports.put((code, sc), rendered, born)

    def _upper(self, code: str, sc: Scope, raw: Mapping[str, Any], actives: Actives) -> CoverageReport | None:
        try:
            children = region_rows(_list(raw["children"]), lambda row: actives.count(str(row[0]), sc.dim))
            return report(code, sc, raw, lambda dim: actives.count(code, dim), children, self.lapse_ms)
        except Stale:
            return None

    async def _reference(self, code: str, sc: Scope) -> Rendered | None:
        """The report the slow way (views and breakdown), for the rare moment the county counts are behind."""
        now = self.wall_ms()
        figures, parts = await asyncio.gather(
            views.region_figures(self.redis, self.prefix, code, sc, now_ms=now, lapse_ms=self.lapse_ms),
            breakdown.region_breakdown(self.redis, self.prefix, code, sc, now_ms=now, lapse_ms=self.lapse_ms),
        )
        if figures is None:
            return None
        body: CoverageReport = {**figures, "breakdown": parts}
        return Rendered(body, table=coverage_table, filename=f"coverage-{code}.csv",
                        lookup_last_modified=True).compact()  # fmt: skip

    def _rendered(self, code: str, body: CoverageReport, raw: Mapping[str, Any]) -> Rendered:
        return Rendered(
            body, table=coverage_table, filename=f"coverage-{code}.csv", last_modified_ms=_data_time(raw)
        ).compact()

    async def _actives(self, sc: Scope) -> tuple[Actives, float]:
        """Every county's active villages in the scope's tier, per dimension the scope's reports need."""
        born, now = self.clock(), self.wall_ms()
        cutoff = now - self.lapse_ms
        meta = await self._call("meta")
        tree = self._tree
        loaded_at = _none(meta.get("loaded_at"))
        if tree is None or tree.loaded_at != loaded_at:
            tree = self._tree = Tree.of(loaded_at, (await self._call("tree"))["tree"])
        dims = ["", *sorted(str(d) for d in _list(meta["dims"]))] if _want_dims(sc) == "1" else [sc.dim]
        # Only the counties below a city (or a province) that has reached a village in some dimension.
        parents = sorted(tree.children)
        text = await self._bulk("reached", sc.tier, len(dims), *dims, *parents)
        text = text.decode() if isinstance(text, bytes) else str(text)
        reaching = {parent for parent, columns in zip(parents, text.split(","), strict=True) if columns}
        counties = [c for c in tree.counties_sorted if tree.parent[c] in reaching]
        counts: dict[str, dict[int, int]] = {}
        start = 0
        while start < len(counties):  # one call at a time, each a few ms of Redis: others' reads go in between
            chunk = counties[start : start + COUNTIES_PER_CALL]
            done, text = await self._bulk("actives", cutoff, sc.tier, CALL_BUDGET_US, len(dims), *dims, *chunk)
            if isinstance(text, str):
                text = text.encode()
            for item in text.split(b",") if text else ():
                i, j, n = item.split(b":")
                counts.setdefault(chunk[int(i)], {})[int(j)] = int(n)
            start += max(1, int(done))
        # Made again in the background before it expires, early enough for a pass as long as this one.
        lead = 2 * (self.clock() - born) + REFRESH_MARGIN_S
        self.actives.refresh_after_s = max(self.max_age_s * REFRESH_AT, self.max_age_s - lead)

        actives = Actives(born, cutoff, tree, dims, counts)
        if self.reports.enabled:
            task = asyncio.ensure_future(self._rebuild(sc, actives))
            self._rebuilding.add(task)
            task.add_done_callback(self._rebuilt)
        return actives, born

    def _rebuilt(self, task: asyncio.Task[None]) -> None:
        self._rebuilding.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("remaking the larger regions' reports failed: %r", exc)

    # -- a village ----------------------------------------------------------------------------------------

    async def village(self, code: str) -> tuple[views.Village | None, int | None]:
        """One 12-digit unit's detail (None if unknown) and the read model's last change. Not cached."""
        raw = await self._call("village", code)
        if not _none(raw.get("kind")):
            return None, _data_time(raw)
        name, population = (_none(v) for v in raw["unit"])
        detail = views.village_document(
            code,
            str(raw["kind"]),
            name,
            population,
            [_none(n) for n in _list(raw["ancestors"])],
            _pairs(raw["loc"]),
            [str(s) for s in _list(raw["stations"])],
            now_ms=self.wall_ms(),
            lapse_ms=self.lapse_ms,
        )
        return detail, _data_time(raw)


def _want_dims(sc: Scope) -> str:
    return "1" if sc.carrier is None and sc.cooperation_model is None else "0"


def _known(code: str, raw: Mapping[str, Any]) -> bool:
    return bool(_none(raw.get("kind"))) or code == names.NATIONAL


# -- builders: the document from what the script read ------------------------------------------------------


def region_rows(rows: Sequence[Sequence[Any]], active_of: Callable[[Sequence[Any]], int]) -> list[views.Figures]:
    """Children figures from ``[code, kind, name, total, reached, as_of_ms, stations, count]`` rows; units the
    registry does not know are left out (as :func:`coverage_service.views.figures_many` does)."""
    out: list[views.Figures] = []
    document, levels = views.region_document, divisions.LEVEL_BY_LENGTH
    for row in rows:
        code, kind, name, total, reached, as_of_ms, stations = row[:7]
        if kind is False:
            continue
        out.append(document(code, None if name is False else name, levels[len(code)], total or None, reached or None,
                            as_of_ms or None, stations or None, active_of(row)))  # fmt: skip
    return out


def village_rows(rows: Sequence[Sequence[Any]], sc: Scope, cutoff_ms: int) -> list[views.Figures]:
    """A township's children from ``[code, kind, name, population, reached, last_ms, any_last_ms, stations]``."""
    return [
        figures
        for row in rows
        if (figures := views.village_row(*(_none(v) for v in row), sc=sc, cutoff_ms=cutoff_ms)) is not None
    ]


def report(
    code: str,
    sc: Scope,
    raw: Mapping[str, Any],
    active_of: Callable[[str], int],
    children: list[views.Figures],
    lapse_ms: int,
) -> CoverageReport:
    """A region's report: its figures, its children's, the definition and the breakdown.

    ``active_of(dim)`` is the region's active villages in the scope's tier for a dimension suffix.
    """
    region = _pairs(raw["region"])
    national = code == names.NATIONAL
    head = views.region_document(
        code,
        _none(raw.get("name")) or (views.NATIONAL_NAME if national else None),
        divisions.NATION if national else divisions.level_of(code),
        region.get(sc.total_field),
        region.get(sc.reached_field),
        region.get(fld.AS_OF_MS),
        region.get(sc.station_field),
        active_of(sc.dim),
    )
    return {
        **head,
        "children": children,
        "definition": views.definition(sc, lapse_ms),
        "breakdown": region_breakdown(region, sc, active_of),
    }


def region_breakdown(region: Mapping[str, str], sc: Scope, active_of: Callable[[str], int]) -> Breakdown:
    """As :func:`coverage_service.breakdown.region_breakdown`, from the region's hash and its counts.

    Each entry's reach is read with the scope's tier, under the entry's own dimension (``''`` for any carrier)."""
    tier = sc.tier
    total = int(region.get(sc.total_field, 0))

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
    if sc.carrier is not None:
        carriers, models = [(sc.carrier, sc.dim)], None
    elif sc.cooperation_model is not None:
        carriers, models = None, [(sc.cooperation_model, sc.dim)]
    else:
        found_carriers, found_models = _dims(region)
        carriers = [(ANY_CARRIER, ""), *((c, _CARRIER_DIM + c) for c in found_carriers)]
        models = [(m, _MODEL_DIM + m) for m in found_models]
    return cast(Breakdown, {
        "by_carrier": None if carriers is None else entries("carrier", carriers),
        "by_cooperation_model": None if models is None else entries("cooperation_model", models),
        "parcels": breakdown._parcels(dict(region)) if sc == ALL else None,
    })  # fmt: skip


_REACHED: Final = fld.VILLAGES_REACHED
_CARRIER_DIM: Final = fld.DIM_SEP + fld.CARRIER
_MODEL_DIM: Final = fld.DIM_SEP + fld.MODEL
_CARRIER_HEAD: Final = fld.VILLAGES_REACHED + _CARRIER_DIM
_MODEL_HEAD: Final = fld.VILLAGES_REACHED + _MODEL_DIM


def _dims(region: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The carriers and the models with a reach count in the region (as :func:`coverage_service.breakdown._dims`)."""
    carriers, models = [], []
    for key in region:
        if key.startswith(_CARRIER_HEAD):
            if fld.TIER_SEP not in key:
                carriers.append(key[len(_CARRIER_HEAD) :])
        elif key.startswith(_MODEL_HEAD) and fld.TIER_SEP not in key:
            models.append(key[len(_MODEL_HEAD) :])
    return sorted(carriers), sorted(models)
