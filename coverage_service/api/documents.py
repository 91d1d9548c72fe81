"""The coverage API's hot documents, kept: a region's coverage report, rendered once and served from memory.

Reports are kept in a :class:`~coverage_service.api.cache.FigureCache` for
LASTMILE_COVERAGE_FIGURES_MAX_AGE_SECONDS, counted from their oldest read; past it, a report whose region's version is
unchanged is served again without being made again (docs/reading-coverage.md, "Freshness"). Village details are
read afresh every time (one cheap call).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from coverage_service import fold
from coverage_service.api.cache import FigureCache
from coverage_service.api.representation import Rendered, Table
from coverage_service.readmodel.filters import ALL, Filter
from coverage_service.readmodel.queries import CoverageReport, Reader, Village

KEPT_REPORTS: Final = 8192  # reports kept for revalidation, the least recently used let go first
# A report is made afresh at least this often however often its version is found unchanged: a bound on what a
# version could miss (a Redis restored to an older state whose counts happen to match).
REVALIDATE_FOR_S: Final = 30.0

TABLE_COLUMNS: Final = (
    "code",
    "name",
    "level",
    "villages_total",
    "villages_reached",
    "villages_active",
    "villages_lapsed",
    "villages_with_station",
    "coverage_rate",
    "as_of",
)


class CoverageDocument(CoverageReport):
    """A coverage report as served: with whether the read model is behind the scans accepted."""

    stale: bool


class VillageDocument(Village):
    """A village's detail as served: with whether the read model is behind the scans accepted."""

    stale: bool


def marked(body: Mapping[str, Any], stale: bool) -> dict[str, Any]:
    """``body`` with ``stale`` beside its ``as_of`` (at the end if it has none)."""
    out: dict[str, Any] = {}
    for k, v in body.items():
        out[k] = v
        if k == "as_of":
            out["stale"] = stale
    out.setdefault("stale", stale)
    return out


def coverage_table(body: Mapping[str, Any]) -> Table:
    """The CSV form of a coverage report: the region itself first, so its totals travel with the file."""
    rows = [body, *body["children"]]
    return Table(TABLE_COLUMNS, [[row[c] for c in TABLE_COLUMNS] for row in rows])


@dataclass(slots=True)
class _Kept:
    rendered: Rendered | None
    version: str
    first_day: int  # of the lapse window it was made in
    stale: bool
    made: float  # clock time


class Documents:
    """The documents of one app: its reader, lapse window and report cache."""

    def __init__(
        self,
        reader: Reader,
        *,
        lapse_days: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        stale: Callable[[], bool] = lambda: False,
    ) -> None:
        self.reader, self.lapse_days = reader, lapse_days
        self.stale = stale
        self.clock, self.wall_ms = clock, wall_ms
        self.max_age_s = max_age_s
        self.reports: FigureCache[tuple[str, Filter], Rendered | None] = FigureCache(max_age_s, clock=clock)
        self._kept: OrderedDict[tuple[str, Filter], _Kept] = OrderedDict()
        self.revalidated = 0  # reports served again because their region's version had not changed

    async def close(self) -> None:
        await self.reports.close()

    async def region(self, code: str, flt: Filter = ALL) -> Rendered | None:
        """The coverage report of ``code`` (``CN`` or 2/4/6/9 digits) in filter ``flt``, rendered; None if the
        registry does not have it. Cached: at most the figures' max age old."""
        return await self.reports.get((code, flt), lambda: self._report(code, flt))

    async def _report(self, code: str, flt: Filter) -> tuple[Rendered | None, float]:
        """A report made, or the one made before if its region's version and lapse window have not changed since."""
        born, now, stale = self.clock(), self.wall_ms(), self.stale()
        first_day = fold.lapse_window(now, self.lapse_days).first_day
        key = (code, flt)
        kept = self._kept.get(key)
        if (
            kept is not None
            and kept.first_day == first_day
            and kept.stale == stale
            and born - kept.made <= REVALIDATE_FOR_S
            and await self.reader.version(code) == kept.version
        ):
            self._kept.move_to_end(key)
            self.revalidated += 1
            return kept.rendered, born
        made = await self.reader.region_report(code, flt, now_ms=now, lapse_days=self.lapse_days)
        rendered = None
        if made.body is not None:
            body, filename = marked(made.body, stale), f"coverage-{code}.csv"
            rendered = Rendered(
                body, table=coverage_table, filename=filename, last_modified_ms=made.data_time
            ).compact()
        if made.version is not None and self.reports.enabled:
            self._kept[key] = _Kept(rendered, made.version, first_day, stale, born)
            self._kept.move_to_end(key)
            if len(self._kept) > KEPT_REPORTS:
                self._kept.popitem(last=False)
        return rendered, born

    async def village(self, code: str) -> tuple[VillageDocument | None, int | None]:
        """One 12-digit unit's detail (None if unknown) and the read model's last change. Not cached."""
        body, last_modified_ms = await self.reader.village(code, now_ms=self.wall_ms(), lapse_days=self.lapse_days)
        return (None if body is None else cast(VillageDocument, marked(body, self.stale()))), last_modified_ms
