"""The coverage API's hot documents, kept: a region's coverage report, rendered once and served from memory.

Reports are kept in a :class:`~coverage_service.api.cache.FigureCache` for COVERAGE_FIGURES_MAX_AGE_SECONDS, counted
from their oldest read; village details are read afresh every time (one cheap call).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from coverage_service.api.cache import FigureCache
from coverage_service.api.representation import Rendered, Table
from coverage_service.readmodel.filters import ALL, Filter
from coverage_service.readmodel.queries import Reader, Village

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


def coverage_table(body: Mapping[str, Any]) -> Table:
    """The CSV form of a coverage report: the region itself first, so its totals travel with the file."""
    rows = [body, *body["children"]]
    return Table(TABLE_COLUMNS, [[row[c] for c in TABLE_COLUMNS] for row in rows])


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
    ) -> None:
        self.reader, self.lapse_days = reader, lapse_days
        self.clock, self.wall_ms = clock, wall_ms
        self.max_age_s = max_age_s
        self.reports: FigureCache[tuple[str, Filter], Rendered | None] = FigureCache(max_age_s, clock=clock)

    async def close(self) -> None:
        await self.reports.close()

    async def region(self, code: str, flt: Filter = ALL) -> Rendered | None:
        """The coverage report of ``code`` (``CN`` or 2/4/6/9 digits) in filter ``flt``, rendered; None if the
        registry does not have it. Cached: at most the figures' max age old."""
        return await self.reports.get((code, flt), lambda: self._report(code, flt))

    async def _report(self, code: str, flt: Filter) -> tuple[Rendered | None, float]:
        born = self.clock()
        body, data_time = await self.reader.region_report(code, flt, now_ms=self.wall_ms(), lapse_days=self.lapse_days)
        if body is None:
            return None, born
        rendered = Rendered(body, table=coverage_table, filename=f"coverage-{code}.csv", last_modified_ms=data_time)
        return rendered.compact(), born

    async def village(self, code: str) -> tuple[Village | None, int | None]:
        """One 12-digit unit's detail (None if unknown) and the read model's last change. Not cached."""
        return await self.reader.village(code, now_ms=self.wall_ms(), lapse_days=self.lapse_days)
