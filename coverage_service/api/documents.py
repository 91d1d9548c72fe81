"""The coverage API's hot documents, kept: a region's coverage report, rendered once and served from memory.

Reports are kept in a :class:`~coverage_service.api.cache.FigureCache` for COVERAGE_FIGURES_MAX_AGE_SECONDS, counted
from their oldest read; village details are read afresh every time (one cheap call).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from coverage_service.api.cache import FigureCache
from coverage_service.api.representation import Rendered, Table
from coverage_service.readmodel.filters import ALL, Filter
from coverage_service.readmodel.queries import Actives, CoverageReport, Reader, Stale, Tree, Village
from lastmile import names

log = logging.getLogger("lastmile.coverage.documents")

REFRESH_AT: Final = 0.5  # the county counts are made again in the background from this share of the max age at most
REFRESH_MARGIN_S: Final = 0.05
REBUILD_ASKED_WITHIN_S: Final = 10.0  # reports of larger regions asked for this recently are made with each count
REBUILD_AT_ONCE: Final = 8

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
    """The documents of one app: its reader, lapse window and caches."""

    def __init__(
        self,
        reader: Reader,
        *,
        lapse_ms: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.reader, self.lapse_ms = reader, lapse_ms
        self.clock, self.wall_ms = clock, wall_ms
        self.max_age_s = max_age_s
        self._tree: Tree | None = None
        self._asked: dict[Filter, dict[str, float]] = {}  # larger regions' reports asked for, and when
        self._rebuilding: set[asyncio.Task[None]] = set()
        self.reports: FigureCache[tuple[str, Filter], Rendered | None] = FigureCache(max_age_s, clock=clock)
        # A region above the counties needs every county's active villages: counted once per filter and kept as
        # long as a report; each time they are made, the larger regions' reports asked for lately are made again
        # with them, so requests for those do not wait.
        self.actives: FigureCache[Filter, Actives] = FigureCache(
            max_age_s, refresh_after_s=max_age_s * REFRESH_AT, clock=clock
        )

    async def close(self) -> None:
        for task in self._rebuilding:
            task.cancel()
        await asyncio.gather(self.reports.close(), self.actives.close(), *self._rebuilding, return_exceptions=True)

    # -- a region's report --------------------------------------------------------------------------------

    async def region(self, code: str, flt: Filter = ALL) -> Rendered | None:
        """The coverage report of ``code`` (``CN`` or 2/4/6/9 digits) in filter ``flt``, rendered; None if the
        registry does not have it. Cached: at most the figures' max age old."""
        if code != names.NATIONAL and len(code) >= 6:
            return await self.reports.get((code, flt), lambda: self._indexed(code, flt))
        self._asked.setdefault(flt, {})[code] = self.clock()
        return await self.reports.get((code, flt), lambda: self._upper_report(code, flt))

    async def _indexed(self, code: str, flt: Filter) -> tuple[Rendered | None, float]:
        born = self.clock()
        body, data_time = await self.reader.indexed_report(code, flt, now_ms=self.wall_ms(), lapse_ms=self.lapse_ms)
        return self._rendered(code, body, data_time), born

    async def _upper_report(self, code: str, flt: Filter) -> tuple[Rendered | None, float]:
        actives = await self.actives.get(flt, lambda: self._actives(flt))
        return await self._upper_from(code, flt, actives)

    async def _upper_from(self, code: str, flt: Filter, actives: Actives) -> tuple[Rendered | None, float]:
        """A larger region's report from the county counts (read first) and its hashes (read now)."""
        try:
            body, data_time = await self.reader.upper_report(code, flt, actives, lapse_ms=self.lapse_ms)
        except Stale:  # the registry or the carriers changed since the counts were made: count again now
            fresh, born = await self._count(flt)
            body, data_time = await self.reader.upper_report(code, flt, fresh, lapse_ms=self.lapse_ms)
            return self._rendered(code, body, data_time), born
        return self._rendered(code, body, data_time), actives.born

    async def _rebuild(self, flt: Filter, actives: Actives) -> None:
        """With new county counts, the reports of the larger regions asked for lately, made at once: the
        requests for them find fresh reports instead of waiting for one."""
        now = self.clock()
        asked = self._asked.get(flt, {})
        for code in [c for c, at in asked.items() if now - at > REBUILD_ASKED_WITHIN_S]:
            del asked[code]
        if not asked:
            self._asked.pop(flt, None)
        codes = list(asked)
        for start in range(0, len(codes), REBUILD_AT_ONCE):
            made = await asyncio.gather(
                *(self._upper_from(c, flt, actives) for c in codes[start : start + REBUILD_AT_ONCE])
            )
            for code, (rendered, born) in zip(codes[start : start + REBUILD_AT_ONCE], made, strict=True):
                self.reports.put((code, flt), rendered, born)

    def _rendered(self, code: str, body: CoverageReport | None, data_time: int | None) -> Rendered | None:
        if body is None:
            return None
        return Rendered(
            body, table=coverage_table, filename=f"coverage-{code}.csv", last_modified_ms=data_time
        ).compact()

    async def _count(self, flt: Filter) -> tuple[Actives, float]:
        """Every county's active villages in the filter's tier, per dimension the filter's reports need."""
        born, now = self.clock(), self.wall_ms()
        loaded_at, dims = await self.reader.dimensions()
        tree = self._tree
        if tree is None or tree.loaded_at != loaded_at:
            tree = self._tree = await self.reader.tree(loaded_at)
        actives = await self.reader.actives(tree, flt, self.reader.dims_for(flt, dims), now - self.lapse_ms, born)
        return actives, born

    async def _actives(self, flt: Filter) -> tuple[Actives, float]:
        actives, born = await self._count(flt)
        # Made again in the background before it expires, early enough for a pass as long as this one.
        lead = 2 * (self.clock() - born) + REFRESH_MARGIN_S
        self.actives.refresh_after_s = max(self.max_age_s * REFRESH_AT, self.max_age_s - lead)
        if self.reports.enabled:
            task = asyncio.ensure_future(self._rebuild(flt, actives))
            self._rebuilding.add(task)
            task.add_done_callback(self._rebuilt)
        return actives, born

    def _rebuilt(self, task: asyncio.Task[None]) -> None:
        self._rebuilding.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("remaking the larger regions' reports failed: %r", exc)

    # -- a village ----------------------------------------------------------------------------------------

    async def village(self, code: str) -> tuple[Village | None, int | None]:
        """One 12-digit unit's detail (None if unknown) and the read model's last change. Not cached."""
        return await self.reader.village(code, now_ms=self.wall_ms(), lapse_ms=self.lapse_ms)
