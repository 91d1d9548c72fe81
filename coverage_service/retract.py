"""What withdrawing an applied event writes: the reverse of :func:`coverage_service.changes.resolve`. Pure; no I/O.

Sums are taken back by subtraction; the figures that are not sums (first and last reach, reach flags, stations) are
the location's reach before and after, from its ledger (:mod:`coverage_service.ledger`). docs/corrections.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from coverage_service.changes import LAPSE_DIGITS, PARENT_DIGITS, TOWNSHIP_DIGITS, VILLAGE_DIGITS, Unit
from coverage_service.fold import LapseWindow, cst_day, lapse_window
from coverage_service.ledger import Floor, Ledger, Reach, Trace
from lastmile import names
from lastmile.divisions import KIND_VILLAGE

f = names.field


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
        _reach_fields(code, unit, trace, before, after, out, own)
    level = {township: own}
    out.regions[township] = own
    for digits in PARENT_DIGITS:
        level = {c[:digits]: counts for c, counts in level.items()}
        out.regions.update(level)
    return out


def _reach_fields(
    code: str, unit: Unit, trace: Trace, before: Reach, after: Reach, out: Retraction, own: dict[str, int]
) -> None:
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
    # Only the withdrawn event's station can go: its name comes with the withdrawal (traces keep a station's key).
    if trace.station and trace.station in before.stations - after.stations:
        out.stations_remove = [trace.station_id]
    if before.stations and not after.stations:
        for q in segments:
            name = f.VILLAGES_WITH_STATION + q
            own[name] = own.get(name, 0) - 1


def _add(into: dict[tuple[str, int], dict[str, int]], key: tuple[str, int], fields: Iterable[str], n: int) -> None:
    counts = into.setdefault(key, {})
    for name in fields:
        counts[name] = counts.get(name, 0) + n


R = names.restated


@dataclass(frozen=True, slots=True)
class Snapshot:
    label: str  # the day it is labelled with (YYYY-MM-DD, China Standard Time)
    taken_at_ms: int


def restatement(
    code: str, unit: Unit, ledger: Ledger, trace: Trace, snapshots: Iterable[Snapshot], lapse_days: int
) -> dict[str, dict[str, int]]:
    """How taking ``trace`` out of village ``code`` changes each daily snapshot taken after it was accepted (label ->
    figure -> change), for every region above the village. A snapshot counted the events accepted before it was
    taken: those of the floor (accepted before the window) and the ledger's traces (``ledger``: after the
    withdrawal) up to then."""
    if unit.kind != KIND_VILLAGE or len(code) != VILLAGE_DIGITS:
        return {}
    out: dict[str, dict[str, int]] = {}
    for snap in snapshots:
        if trace.accepted_s * 1000 > snap.taken_at_ms:
            continue
        earlier = [t for t in ledger.traces.values() if t.accepted_s * 1000 <= snap.taken_at_ms]
        was, now = _counted(ledger.floor, [*earlier, trace]), _counted(ledger.floor, earlier)
        window = lapse_window(snap.taken_at_ms, lapse_days)
        changes = {
            name: int(after) - int(before)
            for name, before, after in (
                (R.VILLAGES_REACHED, "" in was.last_reach, "" in now.last_reach),
                (R.VILLAGES_ACTIVE, _active(was, window), _active(now, window)),
                (R.VILLAGES_WITH_STATION, bool(was.stations), bool(now.stations)),
            )
            if before != after
        }
        if changes:
            out[snap.label] = changes
    return out


def _active(reach: Reach, window: LapseWindow) -> bool:
    last = reach.last_reach.get("")
    return last is not None and window.first_day <= cst_day(last) <= window.last_day


def _counted(floor: Floor, traces: Iterable[Trace]) -> Reach:
    counted = Floor(floor.first_reach_ms, dict(floor.last_reach), set(floor.stations))
    for trace in traces:
        counted.take(trace)
    return Reach(counted.first_reach_ms, counted.last_reach, frozenset(counted.stations))
