"""Withdrawing an applied event: the ledger that keeps a location's withdrawable events, and the read-model changes a
withdrawal makes (the reverse of :func:`coverage_service.changes.resolve`). Pure; no I/O. docs/corrections.md.

Sums are taken back by subtraction; the figures that are not sums (first and last reach, reach flags, stations) are
recomputed from the ledger's events and its floor, what the events no longer withdrawable left.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from coverage_service.changes import LAPSE_DIGITS, PARENT_DIGITS, TOWNSHIP_DIGITS, VILLAGE_DIGITS, Unit
from coverage_service.fold import Entry, cst_day
from lastmile import names
from lastmile.divisions import KIND_VILLAGE

f = names.field


@dataclass(frozen=True, slots=True)
class Trace:
    """What one applied event left at its location, kept while it is withdrawable."""

    digest: bytes  # of (carrier, event_id)
    fingerprint: bytes  # of what counted (lastmile.correction.fingerprint)
    applied_hour: int
    occurred_ms: int
    reaches: bool
    dimensions: tuple[str, ...]
    station_id: str
    counters: tuple[str, ...]

    @classmethod
    def of(cls, e: Entry, fingerprint: bytes, applied_hour: int) -> Trace:
        return cls(
            e.digest, fingerprint, applied_hour, e.occurred_ms, e.reaches, e.dimensions, e.station_id, e.counters
        )

    def suffixes(self) -> tuple[str, ...]:
        """The reach flags it raised: '' and one per dimension; none unless it reaches."""
        return ("", *(f.DIM_SEP + d for d in self.dimensions)) if self.reaches else ()


@dataclass(frozen=True, slots=True)
class Reach:
    """A location's figures that are not sums."""

    first_reach_ms: int | None
    last_reach: dict[str, int]  # reach flag suffix -> latest reach ms
    stations: frozenset[str]


@dataclass(slots=True)
class Floor:
    """What a location's settled events (no longer withdrawable) left: settled events are never taken back, so their
    first and last reaches and their stations only ever grow."""

    first_reach_ms: int | None = None
    last_reach: dict[str, int] = field(default_factory=dict)
    stations: set[str] = field(default_factory=set)

    def take(self, trace: Trace) -> None:
        if trace.station_id:
            self.stations.add(trace.station_id)
        ms = trace.occurred_ms
        for s in trace.suffixes():
            if self.last_reach.get(s, -1) < ms:
                self.last_reach[s] = ms
        if trace.reaches and (self.first_reach_ms is None or ms < self.first_reach_ms):
            self.first_reach_ms = ms


class Outcome(enum.StrEnum):
    WITHDRAWN = "withdrawn"  # its effect is taken out now
    PENDING = "pending"  # not (yet) applied here: held, and an original arriving later is not counted
    ALREADY_WITHDRAWN = "already_withdrawn"
    MISMATCH = "mismatch"  # the event sent is not the one accepted under that id


@dataclass(slots=True)
class Ledger:
    """One location's withdrawable events, its floor, and its withdrawals (kept as long as the events are)."""

    floor: Floor = field(default_factory=Floor)
    traces: dict[bytes, Trace] = field(default_factory=dict)
    withdrawn: dict[bytes, int] = field(default_factory=dict)  # digest -> hour withdrawn

    def record(self, trace: Trace) -> bool:
        """Keep an event being applied; False when it was withdrawn before it came (then it is not applied)."""
        if trace.digest in self.withdrawn:
            return False
        self.traces[trace.digest] = trace
        return True

    def withdraw(self, digest: bytes, fingerprint: bytes, hour: int) -> tuple[Outcome, Trace | None]:
        if digest in self.withdrawn:
            return Outcome.ALREADY_WITHDRAWN, None
        trace = self.traces.get(digest)
        if trace is not None and trace.fingerprint != fingerprint:
            return Outcome.MISMATCH, None
        self.withdrawn[digest] = hour
        if trace is None:
            return Outcome.PENDING, None
        del self.traces[digest]
        return Outcome.WITHDRAWN, trace

    def settle(self, before_hour: int) -> None:
        """Events applied and withdrawals made before ``before_hour`` are no longer withdrawable or pending."""
        for digest in [d for d, t in self.traces.items() if t.applied_hour < before_hour]:
            self.floor.take(self.traces.pop(digest))
        for digest in [d for d, h in self.withdrawn.items() if h < before_hour]:
            del self.withdrawn[digest]

    def reach(self) -> Reach:
        floor = Floor(self.floor.first_reach_ms, dict(self.floor.last_reach), set(self.floor.stations))
        for trace in self.traces.values():
            floor.take(trace)
        return Reach(floor.first_reach_ms, floor.last_reach, frozenset(floor.stations))


@dataclass(slots=True)
class Retraction:
    """The read-model writes that take one event out (the counterpart of :class:`coverage_service.changes.Changes`)."""

    loc_increments: dict[str, int] = field(default_factory=dict)
    loc_set: dict[str, int] = field(default_factory=dict)
    loc_delete: list[str] = field(default_factory=list)
    regions: dict[str, dict[str, int]] = field(default_factory=dict)  # region code -> field -> increment
    lapses: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)  # (region, CST day) -> increments
    index_set: dict[str, list[Any]] = field(default_factory=dict)  # lapse index -> [ms, village, ...] (may lower)
    index_remove: dict[str, list[str]] = field(default_factory=dict)
    stations_remove: list[str] = field(default_factory=list)
    unreached: int = 0  # administrative villages no event reaches any more


def retraction(code: str, unit: Unit, trace: Trace, before: Reach, after: Reach) -> Retraction:
    """What taking ``trace`` out of location ``code`` writes, given its reach before and after it (:meth:`Ledger.reach`)
    is taken out."""
    out = Retraction()
    township = code[:TOWNSHIP_DIGITS]
    own: dict[str, int] = {}  # what the location adds to its township, and so to every region above
    for counter in trace.counters:
        own[counter] = own.get(counter, 0) - 1
    if len(code) == VILLAGE_DIGITS:
        out.loc_increments = dict(own)
        _reach_fields(code, unit, before, after, out, own)
    level = {township: own}
    out.regions[township] = own
    for digits in PARENT_DIGITS:
        level = {c[:digits]: counts for c, counts in level.items()}
        out.regions.update(level)
    return out


def _reach_fields(code: str, unit: Unit, before: Reach, after: Reach, out: Retraction, own: dict[str, int]) -> None:
    segments = unit.segments
    if before.first_reach_ms != after.first_reach_ms:
        if after.first_reach_ms is None:
            out.loc_delete.append(f.FIRST_REACH_MS)
        else:
            out.loc_set[f.FIRST_REACH_MS] = after.first_reach_ms
    for s, was in before.last_reach.items():
        now = after.last_reach.get(s)
        if now == was:
            continue
        names_ = [f.VILLAGES_REACHED + s + q for q in segments]
        if now is None:
            out.loc_delete += (f.REACHED + s, f.LAST_REACH_MS + s)
            for name in names_:
                own[name] = own.get(name, 0) - 1
            if s == "" and unit.kind == KIND_VILLAGE:
                out.unreached += 1
        else:
            out.loc_set[f.LAST_REACH_MS + s] = now
        old_day, new_day = cst_day(was), None if now is None else cst_day(now)
        if old_day != new_day:
            for r in (code[:n] for n in LAPSE_DIGITS):
                _add(out.lapses, (r, old_day), names_, -1)
                if new_day is not None:
                    _add(out.lapses, (r, new_day), names_, 1)
        for q in segments:
            for index in (code[:TOWNSHIP_DIGITS] + s + q, code[:6] + s + q):
                if now is None:
                    out.index_remove.setdefault(index, []).append(code)
                else:
                    out.index_set.setdefault(index, []).extend((now, code))
    gone = sorted(before.stations - after.stations)
    out.stations_remove = gone
    if before.stations and not after.stations:
        for q in segments:
            name = f.VILLAGES_WITH_STATION + q
            own[name] = own.get(name, 0) - 1


def _add(into: dict[tuple[str, int], dict[str, int]], key: tuple[str, int], fields: Iterable[str], n: int) -> None:
    counts = into.setdefault(key, {})
    for name in fields:
        counts[name] = counts.get(name, 0) + n
