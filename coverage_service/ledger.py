"""A location's ledger: what its withdrawable events left, the floor its settled events left, and its withdrawals,
as the ``ledger:`` hash holds them (names.ledger). Pure; no I/O. docs/corrections.md.

An event stays withdrawable while the day ingest accepted it is within the correction window; then it settles into
the floor, which only grows (first reach the lowest, last reach the highest, stations a union).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from coverage_service.fold import Entry, cst_day
from lastmile import names
from lastmile.correction import b64, unb64

f = names.field
L = names.ledger


@dataclass(frozen=True, slots=True)
class Trace:
    """What one applied event left at its location, kept while it is withdrawable."""

    digest: bytes  # of (carrier, event_id)
    fingerprint: bytes  # of what counted (lastmile.correction.fingerprint)
    accepted_s: int  # when ingest accepted it (s since the epoch)
    occurred_ms: int
    reaches: bool
    dimensions: tuple[str, ...]
    station_id: str
    counters: tuple[str, ...] = ()  # known for the event being withdrawn (from the withdrawal), not kept

    @classmethod
    def of(cls, e: Entry, accepted_ms: int) -> Trace:
        accepted_s = accepted_ms // 1000
        return cls(
            e.digest, e.fingerprint, accepted_s, e.occurred_ms, e.reaches, e.dimensions, e.station_id, e.counters
        )

    @property
    def day(self) -> int:
        """The CST day it was accepted on (fold.cst_day)."""
        return cst_day(self.accepted_s * 1000)

    def suffixes(self) -> tuple[str, ...]:
        """The reach flags it raised: '' and one per dimension; none unless it reaches."""
        return ("", *(f.DIM_SEP + d for d in self.dimensions)) if self.reaches else ()

    @property
    def field(self) -> str:
        return f"{L.TRACE}{self.day}:{b64(self.digest)}"

    @property
    def value(self) -> str:
        # The station goes last: it is the one part that may hold the separator.
        dims = ",".join(self.dimensions)
        accepted, fp, reaches = self.accepted_s, b64(self.fingerprint), int(self.reaches)
        return f"{fp}|{self.occurred_ms}|{reaches}|{accepted}|{dims}|{self.station_id}"


def _trace(name: str, value: str) -> Trace:
    digest = name[len(L.TRACE) :].split(":", 1)[1]
    fp, ms, reaches, accepted, dims, station = value.split("|", 5)
    return Trace(
        unb64(digest),
        unb64(fp),
        int(accepted),
        int(ms),
        reaches == "1",
        tuple(dims.split(",")) if dims else (),
        station,
    )


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

    def fields(self) -> dict[str, str]:
        """As the ledger hash holds it; written by merging (first: the lower, last: the higher) since it only grows."""
        out = {L.STATION + s: "1" for s in sorted(self.stations)}
        out.update({L.LAST_REACH + s: str(ms) for s, ms in self.last_reach.items()})
        if self.first_reach_ms is not None:
            out[L.FIRST_REACH] = str(self.first_reach_ms)
        return out


class Outcome(enum.StrEnum):
    WITHDRAWN = "withdrawn"  # its effect is taken out now
    PENDING = "pending"  # not applied (yet): the withdrawal waits for its original within the window
    UNCHANGED = "unchanged"  # this withdrawal was decided before (a replay, or still waiting): nothing to do
    ALREADY_WITHDRAWN = "already_withdrawn"  # by another correction
    MISMATCH = "mismatch"  # the event sent is not the one accepted under that id


@dataclass(slots=True)
class Ledger:
    """One location's withdrawable events, its floor, and its withdrawals (kept as long as the events are)."""

    floor: Floor = field(default_factory=Floor)
    traces: dict[bytes, Trace] = field(default_factory=dict)
    withdrawn: dict[bytes, tuple[int, str]] = field(default_factory=dict)  # digest -> (day, the withdrawal's position)

    @classmethod
    def of(cls, held: Mapping[str, str]) -> Ledger:
        """A ledger as its hash holds it (HGETALL)."""
        ledger = cls()
        floor = ledger.floor
        for name, value in held.items():
            if name.startswith(L.TRACE):
                trace = _trace(name, value)
                ledger.traces[trace.digest] = trace
            elif name.startswith(L.WITHDRAWN):
                day, position = value.split("|", 1)
                ledger.withdrawn[unb64(name[len(L.WITHDRAWN) :])] = (int(day), position)
            elif name.startswith(L.STATION):
                floor.stations.add(name[len(L.STATION) :])
            elif name == L.FIRST_REACH:
                floor.first_reach_ms = int(value)
            elif name.startswith(L.LAST_REACH):
                floor.last_reach[name[len(L.LAST_REACH) :]] = int(value)
        return ledger

    def record(self, trace: Trace) -> None:
        self.traces[trace.digest] = trace

    def withdraw(self, digest: bytes, fingerprint: bytes, day: int, position: str) -> tuple[Outcome, Trace | None]:
        """Take the event ``digest`` out, for the withdrawal at ``position`` (its place in the topic) on ``day``."""
        held = self.withdrawn.get(digest)
        if held is not None and held[1] != position:
            return Outcome.ALREADY_WITHDRAWN, None
        trace = self.traces.get(digest)
        if trace is None:
            if held is not None:
                return Outcome.UNCHANGED, None
            self.withdrawn[digest] = (day, position)
            return Outcome.PENDING, None
        if trace.fingerprint != fingerprint:
            return Outcome.MISMATCH, None
        self.withdrawn[digest] = held or (day, position)
        del self.traces[digest]
        return Outcome.WITHDRAWN, trace

    def settle(self, before_day: int) -> list[str]:
        """Events accepted and withdrawals made before ``before_day`` leave the window: the events go into the floor.
        Returns the fields to delete."""
        gone = [t for t in self.traces.values() if t.day < before_day]
        for trace in gone:
            self.floor.take(self.traces.pop(trace.digest))
        done = [d for d, (day, _) in self.withdrawn.items() if day < before_day]
        for digest in done:
            del self.withdrawn[digest]
        return [t.field for t in gone] + [L.WITHDRAWN + b64(d) for d in done]

    def reach(self) -> Reach:
        floor = Floor(self.floor.first_reach_ms, dict(self.floor.last_reach), set(self.floor.stations))
        for trace in self.traces.values():
            floor.take(trace)
        return Reach(floor.first_reach_ms, floor.last_reach, frozenset(floor.stations))
