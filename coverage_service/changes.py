"""What a batch of records changes in the read model: the fold's decisions, made in the worker. Pure; no I/O.

:func:`gather` sums a batch per location; :func:`resolve` turns the sums and what the batch's villages hold into the
writes (:class:`Changes`) and :func:`payload` into the apply script's arguments.
Redis then only writes: its one thread is the pipeline's ceiling (docs/read-model.md, "The write path").
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec.msgpack as msgpack

from coverage_service.fold import Record, cst_day
from coverage_service.ledger import Trace
from lastmile import names
from lastmile.divisions import KIND_VILLAGE

f = names.field

VILLAGE_DIGITS = 12
TOWNSHIP_DIGITS = 9
# Levels above a township, by code length; the nation is every code's last region.
PARENT_DIGITS = (6, 4, 2)
# The regions that count last reaches per day (names.LAPSE), by code length: city and province. Townships and
# counties count them in their lapse indexes, which also list the villages.
LAPSE_DIGITS = (4, 2)


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
    # The ledger (docs/corrections.md): per location, its events' traces, packed; per partition and
    # CST day of acceptance, the locations given traces (what the partition's worker settles).
    ledger: dict[str, bytearray] = field(default_factory=dict)
    ledger_days: dict[tuple[str, int], set[str]] = field(default_factory=dict)

    def villages(self) -> dict[str, Location]:
        """The village-level locations (12 digits), whose ``loc:`` hashes the decisions read."""
        return {code: loc for code, loc in self.locations.items() if len(code) == VILLAGE_DIGITS}


class Held(Protocol):
    """What a village holds now: its ``loc:`` hash, values as integers, and whether its station set is non-empty
    (read when the batch brings stations; None: not read)."""

    @property
    def fields(self) -> Mapping[str, int]: ...

    @property
    def stations(self) -> bool | None: ...


@dataclass(slots=True)
class Changes:
    locs: dict[str, list[Any]] = field(default_factory=dict)  # village -> [field, new value, ...]
    regions: dict[str, dict[str, int]] = field(default_factory=dict)  # region code -> field -> increment
    as_of: dict[str, int] = field(default_factory=dict)  # region code -> newest event ms of the batch in it
    indexes: dict[str, list[Any]] = field(default_factory=dict)  # lapse index name -> [last reach ms, village, ...]
    lapses: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)  # (region, CST day) -> increments
    stations: dict[str, list[str]] = field(default_factory=dict)  # village -> station ids to add
    newly_reached: int = 0


def gather(
    records: Iterable[Record],
    units: Mapping[str, Unit | None],
    positions: Mapping[str, int],
    now_ms: int = 0,
) -> Gathered:
    """Sum the records not yet applied (offset above ``positions``, the offsets Redis holds) per location; entries
    at codes the registry does not hold are counted as unknown, not applied, and their digests not kept. Each
    applied event leaves a trace in its location's ledger, by the day it was accepted (``now_ms`` when the record
    does not say): the settling of days past the correction window moves traces into the floor."""
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
        accepted_ms = now_ms if r.received_ms is None else r.received_ms
        day = cst_day(accepted_ms)
        for e in r.entries:
            code = e.location_code
            if units.get(code) is None:
                g.unknown += 1
                continue
            kept.append(e.digest)
            g.applied += 1
            trace = Trace.of(e, accepted_ms)
            packed = g.ledger.get(code)
            if packed is None:
                packed = g.ledger[code] = bytearray()
            packed += trace.pack()
            g.ledger_days.setdefault((ofield, day), set()).add(code)
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
    indexes, lapses = ch.indexes, ch.lapses
    # What villages add to their township (reached and station counts); _roll_up adds it to every region above.
    townships: dict[str, tuple[dict[str, int], int]] = {}
    for code, loc in g.locations.items():
        township_code = code[:TOWNSHIP_DIGITS]
        _merge(townships, township_code, loc.counts, loc.newest_ms)
        if len(code) != VILLAGE_DIGITS:
            continue
        unit = units[code]
        assert unit is not None  # gather() keeps known codes only
        now = held[code]
        values = now.fields
        value = values.get
        writes: list[Any] = []
        for counter, n in loc.counts.items():
            writes += (counter, value(counter, 0) + n)
        first, was = loc.first_reach_ms, value(f.FIRST_REACH_MS)
        if first is not None and (was is None or first < was):
            writes += (f.FIRST_REACH_MS, first)
        township = townships[township_code][0]
        segments = unit.segments
        for s, ms in loc.last_reach.items():
            reached, last_reach = _flag_fields(s)
            if reached not in values:
                writes += (reached, 1)
                if s == "" and unit.kind == KIND_VILLAGE:
                    ch.newly_reached += 1
                for name in _reached_fields(s, segments):
                    township[name] = township.get(name, 0) + 1
            last = value(last_reach)
            if last is None or ms > last:
                writes += (last_reach, ms)
                day, was = cst_day(ms), None if last is None else cst_day(last)
                if day != was:  # the village moves from one day's count to another's (at most once a day)
                    for r in [code[:n] for n in LAPSE_DIGITS]:
                        now_on = lapses.get((r, day))
                        if now_on is None:
                            now_on = lapses[r, day] = {}
                        gone_from = None if was is None else lapses.setdefault((r, was), {})
                        for name in _reached_fields(s, segments):
                            now_on[name] = now_on.get(name, 0) + 1
                            if gone_from is not None:
                                gone_from[name] = gone_from.get(name, 0) - 1
                for sq in _suffixes(s, segments):
                    for index in (township_code + sq, code[:6] + sq):  # township and county keep lapse indexes
                        members = indexes.get(index)
                        if members is None:
                            indexes[index] = [ms, code]
                        else:
                            members += (ms, code)
        if loc.stations:
            ch.stations[code] = list(loc.stations)
            if not now.stations:  # its first station: 一村一站 counts it once
                for q in segments:
                    name = f.VILLAGES_WITH_STATION + q
                    township[name] = township.get(name, 0) + 1
        ch.locs[code] = writes
    _roll_up(townships, ch)
    return ch


@functools.cache
def _flag_fields(suffix: str) -> tuple[str, str]:
    return sys.intern(f.REACHED + suffix), sys.intern(f.LAST_REACH_MS + suffix)


@functools.cache
def _reached_fields(suffix: str, segments: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sys.intern(f.VILLAGES_REACHED + suffix + q) for q in segments)


@functools.cache
def _suffixes(suffix: str, segments: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(suffix + q for q in segments)


def _roll_up(townships: dict[str, tuple[dict[str, int], int]], ch: Changes) -> None:
    """Each township's increments and newest event to its region, each region's to its parent, up to the province
    (the nation has no hash: its figures are its provinces' summed when read). A location's counters are added
    once per level, not once per region above it."""
    level = townships
    for digits in PARENT_DIGITS:
        parents: dict[str, tuple[dict[str, int], int]] = {}
        for code, (counts, newest) in level.items():
            ch.regions[code] = counts
            ch.as_of[code] = newest
            _merge(parents, code[:digits], counts, newest)
        level = parents
    for code, (counts, newest) in level.items():  # the provinces
        ch.regions[code] = counts
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


def payload(
    shard: str, g: Gathered, ch: Changes, expect: Mapping[str, int], registry: str, hour: int, expire_at_s: int
) -> list[bytes]:
    """The apply script's arguments after ``now_ms`` for one shard's part of a batch: the payload (MessagePack), then
    one string of packed digests per partition named in its ``digests`` list, then the packed traces of each location
    in its ``ledger`` list (binary strings go as arguments of their own: Redis's MessagePack has no binary type). The
    format is on ``apply.lua``."""
    digests = [(ofield, b"".join(d)) for ofield, d in g.digests.items()]
    body = msgpack.encode(
        {
            "shard": shard,
            "expect": dict(expect),
            "registry": registry,
            "hour": hour,
            "expire_at": expire_at_s,
            "locs": _flat(ch.locs.items()),
            "regions": [x for code, fields in ch.regions.items() for x in (code, fields, ch.as_of.get(code, -1))],
            "indexes": _flat(ch.indexes.items()),
            "lapses": [x for (code, day), fields in ch.lapses.items() for x in (code, day, fields)],
            "stations": _flat(ch.stations.items()),
            "ledger": list(g.ledger),
            "ledger_days": [x for (of, day), codes in g.ledger_days.items() for x in (f"{of}:{day}", sorted(codes))],
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
    return [body, *(packed for _, packed in digests), *(bytes(traces) for traces in g.ledger.values())]


def _flat(pairs: Iterable[tuple[Any, Any]]) -> list[Any]:
    return [x for pair in pairs for x in pair]
