"""The load generator: realistic scan events for a real registry, and the exact figures they must produce.

Its load model (skewed county volumes, one carrier per batch, re-sends, late and out-of-order events) is on
docs/performance.md. The throughput phase builds its batches before it starts (:meth:`Generator.prebuild`), so that
making the load does not compete with the services for the machine's two cores.
"""

from __future__ import annotations

import itertools
import random
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import orjson

from lastmile.registry import Registry

# Carriers by share of rural parcels (roughly the 2023 market shares); more carriers get generic names.
CARRIER_SHARES: Final = (
    ("zto", 22),
    ("yto", 17),
    ("yunda", 15),
    ("sto", 13),
    ("jtexpress", 11),
    ("sf", 8),
    ("ems", 8),
    ("jd", 6),
)
# A few counties (e-commerce hubs, big towns) carry most parcels: county rank r weighs 1 / r**ZIPF_S, in an order
# shuffled by the seed; within a county every village-level unit is equally likely.
ZIPF_S: Final = 0.9
# Carriers retry: this share of a batch are exact re-sends of the carrier's events from earlier batches (never of
# the same batch, which ingest refuses as a malformed request).
DUPLICATE_SHARE: Final = 0.03
LATE_SHARE: Final = 0.05  # events hours to days old (the others jitter by minutes)
RESEND_MEMORY: Final = 5_000  # recent events per carrier a re-send is picked from (retries come soon)

# Event types with their share; the reach types dominate, as at real village stations.
TYPE_SHARES: Final = (
    ("delivered", 30),
    ("arrived_at_station", 22),
    ("picked_up", 20),
    ("collected", 8),
    ("arrived_at_hub", 8),
    ("out_for_delivery", 8),
    ("delivery_failed", 4),
)
# The definition of "reached" (docs/reading-coverage.md), restated here on purpose (not imported from the code under
# test), so the expected figures never come from the pipeline's code.
REACH: Final = frozenset({"arrived_at_station", "delivered", "picked_up", "collected"})
COOPERATION_SHARES: Final = (
    ("postal_express", 30),
    ("transport_express", 10),
    ("express_express", 25),
    ("own_station", 15),
    ("express_commerce", 8),
    ("supply_coop", 7),
    ("other", 5),
)
FAIL_REASONS: Final = ("recipient not at home", "address incomplete", "refused by recipient", "station closed")
PROBE_CARRIER: Final = "bench-probe"  # the freshness probes' own carrier, so their counts are unambiguous
CST: Final = timezone(timedelta(hours=8))
NATIONAL: Final = "CN"


@dataclass(slots=True)
class Tally:
    """What events add to the expected figures: distinct events by type, re-sends, villages reached."""

    distinct: int = 0
    duplicates: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    reached: set[str] = field(default_factory=set)

    def add(self, other: Tally) -> None:
        self.distinct += other.distinct
        self.duplicates += other.duplicates
        self.by_type.update(other.by_type)
        self.reached |= other.reached


@dataclass(frozen=True, slots=True)
class Prebuilt:
    """A batch made ahead of a timed phase: its JSON body, and what it adds to the expected figures once it is
    posted (:meth:`Generator.posted`)."""

    carrier: str
    body: bytes
    events: int
    fresh: int  # events made for it (the others are re-sends of earlier batches)
    tally: Tally


class Generator:
    """Scan events for ``registry``. The same seed gives the same events (their times follow the clock), and
    event ids carry the seed, so generators with different seeds never collide in one read model."""

    def __init__(self, registry: Registry, seed: int, carriers: int = 8) -> None:
        if carriers < 1:
            raise ValueError("carriers must be at least 1")
        self.rng = random.Random(seed)
        shares = list(CARRIER_SHARES[:carriers]) + [(f"carrier{i:02d}", 5) for i in range(9, carriers + 1)]
        self.carriers: list[str] = [name for name, _ in shares]
        self._carrier_cum = list(itertools.accumulate(w for _, w in shares))
        self._tag = f"b{seed % 36**6:x}"
        self._counter = 0
        self._admin_village = {u.code for u in registry.villages if u.kind == "village"}
        self._counties, self._county_cum, self._units, self._townships = self._volume_model(registry)
        self._types = [t for t, _ in TYPE_SHARES]
        self._type_cum = list(itertools.accumulate(w for _, w in TYPE_SHARES))
        self._models = [m for m, _ in COOPERATION_SHARES]
        self._model_cum = list(itertools.accumulate(w for _, w in COOPERATION_SHARES))
        self._earlier: dict[str, deque[dict[str, Any]]] = {c: deque(maxlen=RESEND_MEMORY) for c in self.carriers}
        self._time_text: dict[int, str] = {}
        # What the pipeline must show, from the distinct events posted; _tally is where events are counted as
        # they are made (a pre-built batch's own until it is posted).
        self._totals = Tally()
        self._tally = self._totals

    def _volume_model(
        self, registry: Registry
    ) -> tuple[list[str], list[float], dict[str, list[str]], dict[str, list[str]]]:
        units: dict[str, list[str]] = {}
        for u in registry.villages:
            units.setdefault(u.code[:6], []).append(u.code)
        townships: dict[str, list[str]] = {}
        for t in registry.townships:
            townships.setdefault(t.code[:6], []).append(t.code)
        counties = sorted(c for c in units if c in townships)
        if not counties:
            raise ValueError(f"the registry {registry.source} has no county with townships and villages")
        self.rng.shuffle(counties)
        weights = [1.0 / (rank**ZIPF_S) for rank in range(1, len(counties) + 1)]
        return counties, list(itertools.accumulate(weights)), units, townships

    # -- events ---------------------------------------------------------------------------------------

    def next_batch(self, n: int, carrier: str | None = None) -> list[dict[str, Any]]:
        """``n`` valid events of one carrier (chosen by share unless given), a few of them re-sends."""
        rng = self.rng
        if carrier is None:
            carrier = self.carriers[bisect_right(self._carrier_cum, rng.random() * self._carrier_cum[-1])]
        earlier = self._earlier.setdefault(carrier, deque(maxlen=RESEND_MEMORY))
        resends = min(len(earlier), sum(1 for _ in range(n) if rng.random() < DUPLICATE_SHARE))
        fresh = n - resends
        now = time.time()
        counties = rng.choices(self._counties, cum_weights=self._county_cum, k=fresh)
        types = rng.choices(self._types, cum_weights=self._type_cum, k=fresh)
        made = [
            self._event(carrier, county, event_type, now) for county, event_type in zip(counties, types, strict=True)
        ]
        batch = list(made)
        if resends:
            # Only events of earlier batches are re-sent: ingest refuses a batch that repeats an event_id.
            for i in rng.sample(range(len(earlier)), resends):
                batch.insert(int(rng.random() * (len(batch) + 1)), earlier[i])
                self._tally.duplicates += 1
        earlier.extend(made)
        return batch

    def prebuild(self, batches: int, n: int) -> list[Prebuilt]:
        """``batches`` batches of ``n`` events, serialised, counted in the expected figures only once they are
        :meth:`posted`. Post them in order: a batch re-sends events of the batches before it."""
        out: list[Prebuilt] = []
        try:
            for _ in range(batches):
                self._tally = tally = Tally()
                batch = self.next_batch(n)
                body = orjson.dumps({"events": batch})
                out.append(Prebuilt(batch[0]["carrier"], body, len(batch), tally.distinct, tally))
        finally:
            self._tally = self._totals
        return out

    def posted(self, batch: Prebuilt) -> None:
        """Count a pre-built batch as sent: its events are now part of what the pipeline must show."""
        self._totals.add(batch.tally)

    def unsent(self, batches: Sequence[Prebuilt]) -> None:
        """Forget the pre-built batches never posted (the ones after those posted), so that no later batch
        re-sends one of their events as if it had been sent."""
        for batch in reversed(batches):
            earlier = self._earlier[batch.carrier]
            for _ in range(min(batch.fresh, len(earlier))):
                earlier.pop()

    def probe(self, carrier: str, village: str) -> dict[str, Any]:
        """One delivered event by ``carrier`` at ``village`` now: the freshness scenario's marker."""
        event = self._make(carrier, "delivered", village, time.time(), station=True)
        self._count(event)
        return event

    def _event(self, carrier: str, county: str, event_type: str, now: float) -> dict[str, Any]:
        rng = self.rng
        at_township = event_type == "arrived_at_hub" or (
            event_type in ("out_for_delivery", "delivery_failed") and rng.random() < 0.3
        )
        pool = self._townships[county] if at_township else self._units[county]
        code = pool[int(rng.random() * len(pool))]
        # Minutes of jitter (out of order); a share hours to days late (a station's backlog uploaded).
        age = rng.random() * 600.0
        if rng.random() < LATE_SHARE:
            age += 3600.0 + rng.random() * 6 * 86_400.0
        event = self._make(carrier, event_type, code, now - age, station=event_type in REACH and rng.random() < 0.7)
        self._count(event)
        return event

    def _make(self, carrier: str, event_type: str, code: str, at: float, *, station: bool) -> dict[str, Any]:
        rng = self.rng
        self._counter += 1
        n = self._counter
        event: dict[str, Any] = {
            "event_id": f"{self._tag}-{n:x}",
            "carrier": carrier,
            "waybill": f"{carrier[:2].upper()}{n:012d}",
            "event_type": event_type,
            "location_code": code,
            "occurred_at": self._time(int(at)),
        }
        if station and len(code) == 12:
            event["station_id"] = f"{carrier}-{code}-{1 + int(rng.random() * 2)}"
        if len(code) == 12 and rng.random() < 0.6:
            event["cooperation_model"] = self._models[bisect_right(self._model_cum, rng.random() * self._model_cum[-1])]
        if event_type == "delivery_failed":
            event["reason"] = FAIL_REASONS[n % len(FAIL_REASONS)]
        return event

    def _time(self, second: int) -> str:
        text = self._time_text.get(second)
        if text is None:
            if len(self._time_text) > 200_000:
                self._time_text.clear()
            text = datetime.fromtimestamp(second, CST).isoformat()
            self._time_text[second] = text
        return text

    def _count(self, event: dict[str, Any]) -> None:
        tally = self._tally
        tally.distinct += 1
        tally.by_type[event["event_type"]] += 1
        code = event["location_code"]
        if event["event_type"] in REACH and code in self._admin_village:
            tally.reached.add(code)

    # -- what the pipeline must show ------------------------------------------------------------------

    @property
    def events_distinct(self) -> int:
        return self._totals.distinct

    def villages(self, reached: bool | None = None) -> list[str]:
        """Administrative villages, all or only those (not) reached by the events so far, in code order."""
        if reached is None:
            return sorted(self._admin_village)
        return sorted(c for c in self._admin_village if (c in self._totals.reached) == reached)

    def expected(self) -> dict[str, Any]:
        """The exact figures the distinct events produced so far must show in the read model."""
        totals = self._totals
        reached: Counter[str] = Counter()
        for code in totals.reached:
            reached[code[:2]] += 1
            reached[code[:6]] += 1
        reached[NATIONAL] = len(totals.reached)
        return {
            "events_distinct": totals.distinct,
            "duplicates_sent": totals.duplicates,
            "villages_reached": dict(reached),
            "by_type": dict(totals.by_type),
        }
