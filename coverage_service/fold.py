"""The aggregation fold's pure half: what one scan event changes in the read model. No I/O.

An event becomes an :class:`Entry`: the counters it increments, whether it reaches a village, and the dimensions its
reach counts under; :mod:`coverage_service.changes` sums a batch of them into the read model's writes.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import orjson

from coverage_service import dedup
from lastmile import correction, names, scan
from lastmile.names import field

# Parcel volume is counted by calendar year in China Standard Time, the year regulators report in.
CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")
CST_OFFSET_MS = int(CHINA_STANDARD_TIME.utcoffset(None).total_seconds()) * 1000
DAY_MS = 86_400_000


def cst_day(ms: int) -> int:
    """The day a time falls on in China Standard Time, counted from 1970-01-01 (day 0)."""
    return (ms + CST_OFFSET_MS) // DAY_MS


def day_start_ms(day: int) -> int:
    """When a day (:func:`cst_day`) begins, in ms since the epoch."""
    return day * DAY_MS - CST_OFFSET_MS


@dataclass(frozen=True, slots=True)
class LapseWindow:
    """The days a reached village counts as active on (docs/reading-coverage.md, "Active and lapsed"): the last
    ``days`` days in China Standard Time, today included, and the next day (scans may be minutes ahead)."""

    first_day: int
    last_day: int

    @property
    def start_ms(self) -> int:
        return day_start_ms(self.first_day)


def lapse_window(now_ms: int, days: int) -> LapseWindow:
    today = cst_day(now_ms)
    return LapseWindow(today - days + 1, today + 1)


@dataclass(frozen=True, slots=True)
class Entry:
    digest: bytes  # of (carrier, event_id): the dedup identity (coverage_service.dedup)
    location_code: str
    occurred_ms: int
    reaches: bool
    counters: tuple[str, ...]
    dimensions: tuple[str, ...]
    station_id: str = ""
    fingerprint: bytes = b""  # of what counted: a withdrawal must repeat it (lastmile.correction)


def entry(event: scan.ScanEvent) -> Entry:
    ms = event.occurred_ms
    year = _china_year((ms + CST_OFFSET_MS) // DAY_MS) if event.event_type in scan.VOLUME_TYPES else 0
    counters, dimensions = _labels(event.event_type, event.carrier, year, event.cooperation_model)
    return Entry(
        digest=dedup.digest(event.carrier, event.event_id),
        location_code=event.location_code,
        occurred_ms=ms,
        reaches=event.reaches,
        counters=counters,
        dimensions=dimensions,
        station_id=event.station_id or "" if event.is_village else "",
        fingerprint=correction.fingerprint(event),
    )


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One correction of a record: the event it withdraws (as an entry, to take out exactly what counted), why,
    and its replacement's id."""

    index: int  # in its record
    event: scan.ScanEvent
    entry: Entry
    reason: str
    replacement_id: str | None


@functools.lru_cache(maxsize=4_096)
def _china_year(day: int) -> int:
    """The year of a day counted in China Standard Time (days since its 1970-01-01)."""
    return (date(1970, 1, 1) + timedelta(days=day)).year


@functools.lru_cache(maxsize=65_536)
def _labels(event_type: str, carrier: str, year: int, model: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The counters an event increments and the dimensions its reach counts under: a handful of combinations,
    made once each, so that the batch's sums hash the same string objects (year 0: not a volume type)."""
    counters = [field.TYPE + event_type, field.CARRIER + carrier]
    if year:
        counters.append(field.VOLUME + str(year))
    dimensions = [field.CARRIER + carrier]
    if model is not None:
        counters.append(field.MODEL + model)
        dimensions.append(field.MODEL + model)
    return tuple(sys.intern(c) for c in counters), tuple(sys.intern(d) for d in dimensions)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Something in a record that cannot be applied, bound for the dead-letter topic."""

    index: int | None  # position in the record's batch; None when the whole record is unusable
    reason: str
    raw: Any


@dataclass(frozen=True, slots=True)
class Decoded:
    events: list[scan.ScanEvent]
    rejected: list[Rejected]
    received_ms: int | None = None  # when ingest accepted the record
    withdrawals: tuple[Withdrawal, ...] = ()


def decode_record(value: bytes | None, *, now: datetime) -> Decoded:
    """A topic record's events, each validated again: the topic accepts anything its writers send.

    A record holds one event object, a batch ``{"events": [...]}`` (what ingest publishes) or a batch of corrections
    ``{"corrections": [...]}``.
    """
    if value is None:
        return Decoded([], [Rejected(None, "record has no value", None)])
    batch = scan.decode_batch(value)  # what ingest publishes, in one pass
    if batch is not None:
        events: list[scan.ScanEvent] = []
        rejected: list[Rejected] = []
        for i, event in enumerate(batch.events):
            errors = scan.rules(event, now=now)
            if errors:
                rejected.append(Rejected(i, "; ".join(errors), event.to_json()))
            else:
                events.append(event)
        return Decoded(events, rejected, _received_ms(batch.received_at))
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Decoded([], [Rejected(None, f"not JSON: {exc}", value.decode("utf-8", "replace")[:2000])])
    if isinstance(body, dict) and correction.CORRECTIONS in body:
        return _corrections(body, now=now)
    if isinstance(body, dict) and "events" in body:
        items = body["events"]
        if not isinstance(items, list):
            return Decoded([], [Rejected(None, "'events' must be an array", body)])
    else:
        items = [body]
    events, rejected = [], []
    for i, raw in enumerate(items):
        result = scan.validate(raw, now=now)
        if isinstance(result, scan.ScanEvent):
            events.append(result)
        else:
            rejected.append(Rejected(i, "; ".join(result), raw))
    received = body.get("received_at") if isinstance(body, dict) and "events" in body else None
    return Decoded(events, rejected, _received_ms(received if isinstance(received, str) else None))


def _corrections(body: dict[str, Any], *, now: datetime) -> Decoded:
    items = body[correction.CORRECTIONS]
    if not isinstance(items, list):
        return Decoded([], [Rejected(None, "'corrections' must be an array", body)])
    withdrawals, rejected = [], []
    for i, raw in enumerate(items):
        result = correction.validate(raw, now=now)
        if isinstance(result, correction.Correction):
            replacement = None if result.replacement is None else result.replacement.event_id
            withdrawals.append(Withdrawal(i, result.event, entry(result.event), result.reason, replacement))
        else:
            rejected.append(Rejected(i, "; ".join(result), raw))
    received = body.get("received_at")
    return Decoded([], rejected, _received_ms(received if isinstance(received, str) else None), tuple(withdrawals))


def _received_ms(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record ready for the apply script."""

    topic: str
    partition: int
    offset: int
    entries: list[Entry]
    dead_letters: int = 0  # what of it went to the dead-letter topic, counted once when it is applied
    duplicates: int = 0  # repeats the writer took out of ``entries``, counted once when it is applied
    received_ms: int | None = None  # when ingest accepted it (None: not said; taken as when it is applied)
    withdrawals: tuple[Withdrawal, ...] = ()

    @property
    def offset_field(self) -> str:
        return names.offset_field(self.topic, self.partition)
