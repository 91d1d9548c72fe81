"""The aggregation fold's pure half: what one scan event changes in the read model. No I/O.

An event becomes an :class:`Entry`: the counters it increments, whether it reaches a village, and the dimensions its
reach counts under. ``apply.lua`` applies entries; keeping the decision here lets the rules be tested without Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import orjson

from coverage_service import dedup
from lastmile import names, scan
from lastmile.names import field

# Parcel volume is counted by calendar year in China Standard Time, the year regulators report in.
CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")


@dataclass(frozen=True, slots=True)
class Entry:
    digest: bytes  # of (carrier, event_id): the dedup identity (coverage_service.dedup)
    location_code: str
    occurred_ms: int
    reaches: bool
    counters: tuple[str, ...]
    dimensions: tuple[str, ...]
    station_id: str = ""


def entry(event: scan.ScanEvent) -> Entry:
    counters = [field.TYPE + event.event_type, field.CARRIER + event.carrier]
    if event.event_type in scan.VOLUME_TYPES:
        counters.append(field.VOLUME + str(event.occurred_at.astimezone(CHINA_STANDARD_TIME).year))
    dimensions = [field.CARRIER + event.carrier]
    if event.cooperation_model is not None:
        counters.append(field.MODEL + event.cooperation_model)
        dimensions.append(field.MODEL + event.cooperation_model)
    return Entry(
        digest=dedup.digest(event.carrier, event.event_id),
        location_code=event.location_code,
        occurred_ms=event.occurred_ms,
        reaches=event.reaches,
        counters=tuple(counters),
        dimensions=tuple(dimensions),
        station_id=event.station_id or "" if event.is_village else "",
    )


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


def decode_record(value: bytes | None, *, now: datetime) -> Decoded:
    """A topic record's events, each validated again: the topic accepts anything its writers send.

    A record holds one event object or a batch ``{"events": [...]}`` (what ingest publishes).
    """
    if value is None:
        return Decoded([], [Rejected(None, "record has no value", None)])
    batch = scan.decode_batch(value)  # what ingest publishes, in one pass
    if batch is not None:
        events: list[scan.ScanEvent] = []
        rejected: list[Rejected] = []
        for i, event in enumerate(batch):
            errors = scan.rules(event, now=now)
            if errors:
                rejected.append(Rejected(i, "; ".join(errors), event.to_json()))
            else:
                events.append(event)
        return Decoded(events, rejected)
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Decoded([], [Rejected(None, f"not JSON: {exc}", value.decode("utf-8", "replace")[:2000])])
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
    return Decoded(events, rejected)


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record ready for the apply script."""

    topic: str
    partition: int
    offset: int
    entries: list[Entry]
    dead_letters: int = 0  # what of it went to the dead-letter topic, counted once when it is applied
    duplicates: int = 0  # repeats the writer took out of ``entries``, counted once when it is applied

    @property
    def offset_field(self) -> str:
        return names.offset_field(self.topic, self.partition)


# Fields of one entry in the apply script's flat entry list (see :func:`payload`).
ENTRY_STRIDE: Final = 5


def payload(records: Iterable[Record], expect: Mapping[str, int], hour: int, expire_at_s: int) -> list[bytes]:
    """The apply script's arguments after ``now_ms``: the JSON payload, then each record's packed digests.

    ``expect``: per partition (offset field), the offset Redis must hold now (the writer's position check).
    ``{"expect": {...}, "hour": h, "expire_at": s, "profiles": [[[counter, ...], [dimension, ...]], ...],
    "records": [[offset_field, offset, flat, dead_letters, duplicates], ...]}``, records in offset order per
    partition; ``flat`` holds :data:`ENTRY_STRIDE` values per entry: location_code, occurred_ms, reaches (0/1),
    profile (1-based index into ``profiles``), station_id or ''. Record i's digests (``dedup.DIGEST_BYTES`` per
    entry, in order) are argument i + 1 after the payload: binary, so outside the JSON. Events share a handful of
    profiles (type x carrier x year x model), so the script builds no table per event.
    """
    profiles: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
    wire_records: list[list[Any]] = []
    digests: list[bytes] = []
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        flat: list[Any] = []
        for e in r.entries:
            key = (e.counters, e.dimensions)
            profile = profiles.get(key)
            if profile is None:
                profile = profiles[key] = len(profiles) + 1
            flat.extend((e.location_code, e.occurred_ms, 1 if e.reaches else 0, profile, e.station_id))
        wire_records.append([r.offset_field, r.offset, flat, r.dead_letters, r.duplicates])
        digests.append(b"".join(e.digest for e in r.entries))
    body = orjson.dumps(
        {
            "expect": dict(expect),
            "hour": hour,
            "expire_at": expire_at_s,
            "profiles": [[list(c), list(d)] for c, d in profiles],
            "records": wire_records,
        }
    )
    return [body, *digests]
