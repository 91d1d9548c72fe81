"""A location's ledger: what its withdrawable events left (the ``trace:`` string), and the floor its settled events
left and its withdrawals (the ``ledger:`` hash, names.ledger). Pure; no I/O. docs/corrections.md.

An event stays withdrawable while the day ingest accepted it is within the correction window; then it settles into
the floor, which only grows (first reach the lowest, last reach the highest, stations a union).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from coverage_service.fold import Entry, cst_day
from lastmile import names, scan
from lastmile.correction import b64, unb64

f = names.field
L = names.ledger


# A trace as the ``trace:`` string holds it, records one after another: its key (the first KEY_BYTES of the event's
# identity: unique within a location's window), fingerprint, occurred_ms, accepted_s, flags (bit 0: it reaches; bits
# 1-3: its cooperation model's number, 0 for none; bit 4: a station follows), the carrier's length and name, then
# STATION_BYTES of its station's hash. Some 35 bytes: the ledger's cost per event is the window's traffic times this.
KEY_BYTES: Final = 8
STATION_BYTES: Final = 8
_HEAD: Final = struct.Struct(">8s8sqIBB")
_MODELS: Final = {m: i + 1 for i, m in enumerate(scan.COOPERATION_MODELS)}
_REACHES, _STATION, _MODEL_SHIFT = 0x01, 0x10, 1


def station_key(station_id: str) -> str:
    """A station as traces and the floor name it: 64 bits of its id's hash, in hex."""
    return hashlib.blake2b(station_id.encode(), digest_size=STATION_BYTES).hexdigest() if station_id else ""


@dataclass(frozen=True, slots=True)
class Trace:
    """What one applied event left at its location, kept while it is withdrawable."""

    key: bytes  # the first KEY_BYTES of its identity (lastmile.correction.identity)
    fingerprint: bytes  # of what counted (lastmile.correction.fingerprint)
    accepted_s: int  # when ingest accepted it (s since the epoch)
    occurred_ms: int
    reaches: bool
    carrier: str
    model: str | None
    station: str  # station_key of its station ('' none)
    counters: tuple[str, ...] = ()  # of the event being withdrawn (from the withdrawal), not kept
    station_id: str = ""  # likewise

    @classmethod
    def of(cls, e: Entry, accepted_ms: int) -> Trace:
        carrier, model = "", None
        for d in e.dimensions:
            if d.startswith(f.CARRIER):
                carrier = d[len(f.CARRIER) :]
            elif d.startswith(f.MODEL):
                model = d[len(f.MODEL) :]
        return cls(
            e.digest[:KEY_BYTES],
            e.fingerprint,
            accepted_ms // 1000,
            e.occurred_ms,
            e.reaches,
            carrier,
            model,
            station_key(e.station_id),
            e.counters,
            e.station_id,
        )

    @property
    def day(self) -> int:
        """The CST day it was accepted on (fold.cst_day)."""
        return cst_day(self.accepted_s * 1000)

    @property
    def dimensions(self) -> tuple[str, ...]:
        return (f.CARRIER + self.carrier, *(() if self.model is None else (f.MODEL + self.model,)))

    def suffixes(self) -> tuple[str, ...]:
        """The reach flags it raised: '' and one per dimension; none unless it reaches."""
        return ("", *(f.DIM_SEP + d for d in self.dimensions)) if self.reaches else ()

    def pack(self) -> bytes:
        carrier = self.carrier.encode()
        flags = (_REACHES if self.reaches else 0) | (_MODELS.get(self.model or "", 0) << _MODEL_SHIFT)
        station = bytes.fromhex(self.station)
        if station:
            flags |= _STATION
        head = _HEAD.pack(self.key, self.fingerprint, self.occurred_ms, self.accepted_s, flags, len(carrier))
        return head + carrier + station


def unpack(blob: bytes) -> list[Trace]:
    """The traces of a ``trace:`` string."""
    out, at = [], 0
    while at < len(blob):
        key, fp, occurred, accepted, flags, n = _HEAD.unpack_from(blob, at)
        at += _HEAD.size
        carrier = blob[at : at + n].decode()
        at += n
        station = ""
        if flags & _STATION:
            station = blob[at : at + STATION_BYTES].hex()
            at += STATION_BYTES
        model_no = (flags >> _MODEL_SHIFT) & 0x07
        model = scan.COOPERATION_MODELS[model_no - 1] if model_no else None
        out.append(Trace(key, fp, accepted, occurred, bool(flags & _REACHES), carrier, model, station))
    return out


@dataclass(frozen=True, slots=True)
class Reach:
    """A location's figures that are not sums."""

    first_reach_ms: int | None
    last_reach: dict[str, int]  # reach flag suffix -> latest reach ms
    stations: frozenset[str]  # station_key of each


@dataclass(slots=True)
class Floor:
    """What a location's settled events (no longer withdrawable) left: settled events are never taken back, so their
    first and last reaches and their stations only ever grow."""

    first_reach_ms: int | None = None
    last_reach: dict[str, int] = field(default_factory=dict)
    stations: set[str] = field(default_factory=set)

    def take(self, trace: Trace) -> None:
        if trace.station:
            self.stations.add(trace.station)
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
    traces: dict[bytes, Trace] = field(default_factory=dict)  # by key
    withdrawn: dict[bytes, tuple[int, str]] = field(default_factory=dict)  # digest -> (day, the withdrawal's position)

    @classmethod
    def of(cls, held: Mapping[str, str], traces: bytes = b"") -> Ledger:
        """A ledger as Redis holds it: its ``ledger:`` hash (HGETALL) and ``trace:`` string."""
        ledger = cls()
        floor = ledger.floor
        for trace in unpack(traces):
            ledger.traces[trace.key] = trace
        for name, value in held.items():
            if name.startswith(L.WITHDRAWN):
                day, position = value.split("|", 1)
                ledger.withdrawn[unb64(name[len(L.WITHDRAWN) :])] = (int(day), position)
            elif name.startswith(L.STATION):
                floor.stations.add(name[len(L.STATION) :])
            elif name == L.FIRST_REACH:
                floor.first_reach_ms = int(value)
            elif name.startswith(L.LAST_REACH):
                floor.last_reach[name[len(L.LAST_REACH) :]] = int(value)
        return ledger

    def packed(self) -> bytes:
        """The traces as the ``trace:`` string holds them."""
        return b"".join(t.pack() for t in self.traces.values())

    def record(self, trace: Trace) -> None:
        self.traces[trace.key] = trace

    def withdraw(self, digest: bytes, fingerprint: bytes, day: int, position: str) -> tuple[Outcome, Trace | None]:
        """Take the event ``digest`` out, for the withdrawal at ``position`` (its place in the topic) on ``day``."""
        held = self.withdrawn.get(digest)
        if held is not None and held[1] != position:
            return Outcome.ALREADY_WITHDRAWN, None
        trace = self.traces.get(digest[:KEY_BYTES])
        if trace is None:
            if held is not None:
                return Outcome.UNCHANGED, None
            self.withdrawn[digest] = (day, position)
            return Outcome.PENDING, None
        if trace.fingerprint != fingerprint:
            return Outcome.MISMATCH, None
        self.withdrawn[digest] = held or (day, position)
        del self.traces[trace.key]
        return Outcome.WITHDRAWN, trace

    def settle(self, before_day: int) -> list[str]:
        """Events accepted and withdrawals made before ``before_day`` leave the window: the events go into the floor.
        Returns the hash fields to delete (the traces left are :meth:`packed`)."""
        for trace in [t for t in self.traces.values() if t.day < before_day]:
            self.floor.take(self.traces.pop(trace.key))
        done = [d for d, (day, _) in self.withdrawn.items() if day < before_day]
        for digest in done:
            del self.withdrawn[digest]
        return [L.WITHDRAWN + b64(d) for d in done]

    def reach(self) -> Reach:
        floor = Floor(self.floor.first_reach_ms, dict(self.floor.last_reach), set(self.floor.stations))
        for trace in self.traces.values():
            floor.take(trace)
        return Reach(floor.first_reach_ms, floor.last_reach, frozenset(floor.stations))
