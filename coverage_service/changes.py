"""What a batch of records changes in the read model: the fold's decisions, made in the worker. Pure; no I/O.

:func:`gather` sums a batch per location; :meth:`Gathered.reads` names the state of each village the decisions need;
:func:`resolve` turns both into the writes (:class:`Changes`) and :func:`payload` into the apply script's arguments.
Redis then only writes: its one thread is the pipeline's ceiling (docs/read-model.md, "The write path").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec.msgpack as msgpack

from coverage_service.fold import Record
from lastmile import names
from lastmile.divisions import KIND_VILLAGE

f = names.field

VILLAGE_DIGITS = 12
TOWNSHIP_DIGITS = 9
# Levels above a township, by code length; the nation is every code's last region.
PARENT_DIGITS = (6, 4, 2)


@dataclass(frozen=True, slots=True)
class Unit:
    """What the registry says of a location code: its kind and the segments it counts in ('' and one per
    population tier it reaches; none unless it is an administrative village), as ``units.lua`` derives them."""

    kind: str
    segments: tuple[str, ...]


@dataclass(slots=True)
class Location:
    """A batch's events at one location, summed."""

    offset_field: str  # its partition's
    counts: dict[str, int] = field(default_factory=dict)
    newest_ms: int = -1
    first_reach_ms: int | None = None
    last_reach: dict[str, int] = field(default_factory=dict)  # '' or '|<dimension>' -> latest reach ms
    stations: dict[str, None] = field(default_factory=dict)  # station ids, in order, once each


@dataclass(slots=True)
class Gathered:
    locations: dict[str, Location] = field(default_factory=dict)
    digests: dict[str, list[bytes]] = field(default_factory=dict)  # offset field -> digests of what is applied
    offsets: dict[str, int] = field(default_factory=dict)  # offset field -> the newest offset applied now
    applied: int = 0
    duplicate: int = 0
    unknown: int = 0
    dead_letters: int = 0
    records_applied: int = 0
    records_replayed: int = 0

    def reads(self) -> list[Read]:
        """Per village-level location: the fields of its ``loc:`` hash the decisions need, and whether the size of
        its station set is needed (when the batch brings stations)."""
        out = []
        for code, loc in self.locations.items():
            if len(code) != VILLAGE_DIGITS:
                continue
            counters = list(loc.counts)
            suffixes = list(loc.last_reach)
            fields = [*counters, f.FIRST_REACH_MS]
            for s in suffixes:
                fields += (f.REACHED + s, f.LAST_REACH_MS + s)
            out.append(Read(code, loc.offset_field, counters, suffixes, fields, bool(loc.stations)))
        return out


@dataclass(frozen=True, slots=True)
class Read:
    code: str
    offset_field: str
    counters: list[str]
    suffixes: list[str]
    fields: list[str]  # counters, first_reach_ms, then reached<s> and last_reach_ms<s> per suffix
    stations: bool


@dataclass(frozen=True, slots=True)
class Held:
    """A village's current values of :attr:`Read.fields` (None: absent) and the size of its station set."""

    values: Sequence[str | int | None]
    stations: int = 0


@dataclass(slots=True)
class Changes:
    locs: dict[str, list[Any]] = field(default_factory=dict)  # village -> [field, new value, ...]
    regions: dict[str, dict[str, int]] = field(default_factory=dict)  # region code -> field -> increment
    as_of: dict[str, int] = field(default_factory=dict)  # region code -> newest event ms of the batch in it
    indexes: dict[str, list[Any]] = field(default_factory=dict)  # lapse index name -> [last reach ms, village, ...]
    stations: dict[str, list[str]] = field(default_factory=dict)  # village -> station ids to add
    newly_reached: int = 0


def gather(records: Iterable[Record], units: Mapping[str, Unit | None], positions: Mapping[str, int]) -> Gathered:
    """Sum the records not yet applied (offset above ``positions``, the offsets Redis holds) per location; entries
    at codes the registry does not hold are counted as unknown, not applied, and their digests not kept."""
    g = Gathered()
    locations = g.locations
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        ofield = r.offset_field
        if r.offset <= g.offsets.get(ofield, positions[ofield]):
            g.records_replayed += 1
            continue
        g.offsets[ofield] = r.offset
        g.records_applied += 1
        g.dead_letters += r.dead_letters
        g.duplicate += r.duplicates
        kept = g.digests.setdefault(ofield, [])
        for e in r.entries:
            code = e.location_code
            if units.get(code) is None:
                g.unknown += 1
                continue
            kept.append(e.digest)
            g.applied += 1
            loc = locations.get(code)
            if loc is None:
                loc = locations[code] = Location(ofield)
            counts = loc.counts
            for c in e.counters:
                counts[c] = counts.get(c, 0) + 1
            ms = e.occurred_ms
            if ms > loc.newest_ms:
                loc.newest_ms = ms
            if len(code) != VILLAGE_DIGITS:
                continue
            if e.station_id:
                loc.stations[e.station_id] = None
            if e.reaches:
                if loc.first_reach_ms is None or ms < loc.first_reach_ms:
                    loc.first_reach_ms = ms
                last = loc.last_reach
                for s in ("", *(f.DIM_SEP + d for d in e.dimensions)):
                    if last.get(s, -1) < ms:
                        last[s] = ms
    return g


def resolve(g: Gathered, units: Mapping[str, Unit | None], held: Mapping[str, Held]) -> Changes:
    """The writes of a gathered batch, given what its villages hold now (``held``, keyed by village)."""
    ch = Changes()
    _sum_counters(g, ch)
    regions = ch.regions
    for read in g.reads():
        code = read.code
        unit = units[code]
        assert unit is not None  # gather() keeps known codes only
        loc = g.locations[code]
        now = held[code]
        values = now.values
        above = (code[:TOWNSHIP_DIGITS], *(code[:n] for n in PARENT_DIGITS), names.NATIONAL)
        indexed = above[:2]  # township and county keep lapse indexes
        writes: list[Any] = []
        for i, counter in enumerate(read.counters):
            writes += (counter, int(values[i] or 0) + loc.counts[counter])
        nc = len(read.counters)
        first, was = loc.first_reach_ms, values[nc]
        if first is not None and (was is None or first < int(was)):
            writes += (f.FIRST_REACH_MS, first)
        for j, s in enumerate(read.suffixes):
            ms = loc.last_reach[s]
            if values[nc + 1 + 2 * j] is None:
                writes += (f.REACHED + s, 1)
                if s == "" and unit.kind == KIND_VILLAGE:
                    ch.newly_reached += 1
                for q in unit.segments:
                    name = f.VILLAGES_REACHED + s + q
                    for r in above:
                        _add(regions, r, name, 1)
            last = values[nc + 2 + 2 * j]
            if last is None or ms > int(last):
                writes += (f.LAST_REACH_MS + s, ms)
                for q in unit.segments:
                    for r in indexed:
                        ch.indexes.setdefault(r + s + q, []).extend((ms, code))
        if loc.stations:
            ch.stations[code] = list(loc.stations)
            if now.stations == 0:  # its first station: 一村一站 counts it once
                for q in unit.segments:
                    for r in above:
                        _add(regions, r, f.VILLAGES_WITH_STATION + q, 1)
        ch.locs[code] = writes
    return ch


def _sum_counters(g: Gathered, ch: Changes) -> None:
    """Parcel counters and as-of, summed level by level: each location's counters go to its township (a 9-digit
    location is one), each region's to its parent, up to the nation."""
    level: dict[str, tuple[dict[str, int], int]] = {}
    for code, loc in g.locations.items():
        _merge(level, code[:TOWNSHIP_DIGITS], loc.counts, loc.newest_ms)
    for digits in (*PARENT_DIGITS, 0):
        parents: dict[str, tuple[dict[str, int], int]] = {}
        for code, (counts, newest) in level.items():
            region = ch.regions.setdefault(code, {})
            for name, n in counts.items():
                region[name] = region.get(name, 0) + n
            ch.as_of[code] = newest
            _merge(parents, code[:digits] if digits else names.NATIONAL, counts, newest)
        level = parents
    for code, (counts, newest) in level.items():  # the nation
        for name, n in counts.items():
            _add(ch.regions, code, name, n)
        ch.as_of[code] = newest


def _merge(level: dict[str, tuple[dict[str, int], int]], code: str, counts: Mapping[str, int], newest: int) -> None:
    held = level.get(code)
    if held is None:
        level[code] = (dict(counts), newest)
        return
    into, was = held
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n
    if newest > was:
        level[code] = (into, newest)


def _add(regions: dict[str, dict[str, int]], code: str, name: str, n: int) -> None:
    region = regions.setdefault(code, {})
    region[name] = region.get(name, 0) + n


def payload(
    g: Gathered, ch: Changes, expect: Mapping[str, int], registry: str, hour: int, expire_at_s: int
) -> list[bytes]:
    """The apply script's arguments after ``now_ms``: the payload (MessagePack), then one string of packed digests per
    partition named in its ``digests`` list (binary, so outside the JSON). The format is on ``apply.lua``."""
    digests = [(ofield, b"".join(d)) for ofield, d in g.digests.items()]
    body = msgpack.encode(
        {
            "expect": dict(expect),
            "registry": registry,
            "hour": hour,
            "expire_at": expire_at_s,
            "locs": _flat(ch.locs.items()),
            "regions": [
                x for code, fields in ch.regions.items() for x in (code, _flat(fields.items()), ch.as_of.get(code, -1))
            ],
            "indexes": _flat(ch.indexes.items()),
            "stations": _flat(ch.stations.items()),
            "offsets": _flat(g.offsets.items()),
            "digests": [ofield for ofield, _ in digests],
            "stats": [
                g.applied,
                g.duplicate,
                g.unknown,
                g.records_applied,
                g.records_replayed,
                ch.newly_reached,
                g.dead_letters,
            ],
        }
    )
    return [body, *(packed for _, packed in digests)]


def _flat(pairs: Iterable[tuple[Any, Any]]) -> list[Any]:
    return [x for pair in pairs for x in pair]
