"""Withdrawals, decided without Redis: a read model folded from every event and then withdrawn from equals one folded
from the surviving events only, in every interleaving of batches, repeats, withdrawals (before or after their
original) and settling. The expected read model is computed here from the surviving events themselves.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coverage_service import changes, fold, retract
from coverage_service import ledger as kept
from coverage_service.readmodel.villages import Village
from lastmile import correction, names, scan
from lastmile.correction import b64

f = names.field
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BEIJING = timedelta(hours=8)
V1, V2, V3, COMMUNITY, TOWNSHIP = "140322205206", "140322205207", "140322101201", "140322205208", "140322205"
UNITS: dict[str, changes.Unit | None] = {
    V1: changes.Unit("village", ("", "@p2500")),
    V2: changes.Unit("village", ("",)),
    V3: changes.Unit("village", ("",)),
    COMMUNITY: changes.Unit("community", ()),
    TOWNSHIP: changes.Unit("township", ()),
}
OFFSET_FIELD = names.offset_field("scans", 0)


def scan_event(i: int, code: str, kind: str, carrier: str, model: str | None, station: str | None, hours: int) -> Any:
    raw = {
        "event_id": f"e{i}",
        "carrier": carrier,
        "waybill": f"W{i}",
        "event_type": kind,
        "location_code": code,
        "occurred_at": (NOW - timedelta(hours=hours)).isoformat(),
        "cooperation_model": model,
        "station_id": station,
        **({"reason": "away"} if kind == "delivery_failed" else {}),
    }
    parsed = scan.validate({k: v for k, v in raw.items() if v is not None}, now=NOW)
    assert isinstance(parsed, scan.ScanEvent), parsed
    return parsed


@st.composite
def events(draw: st.DrawFn) -> list[scan.ScanEvent]:
    out = []
    for i in range(draw(st.integers(1, 14))):
        code = draw(st.sampled_from([V1, V2, V3, COMMUNITY, TOWNSHIP]))
        kinds = scan.EVENT_TYPES if len(code) == 12 else ("arrived_at_hub", "out_for_delivery", "delivery_failed")
        out.append(
            scan_event(
                i,
                code,
                draw(st.sampled_from(kinds)),
                draw(st.sampled_from(["sf", "zto"])),
                draw(st.sampled_from([None, "own_station"])),
                draw(st.sampled_from([None, "s1", "s2"])) if len(code) == 12 else None,
                draw(st.sampled_from([1, 2, 30, 75])),  # same day, and other days
            )
        )
    return out


@dataclass
class Model:
    """The read model's keys as dicts, written the way the apply and withdraw scripts write them."""

    locs: dict[str, Counter[str]] = field(default_factory=dict)
    regions: dict[str, Counter[str]] = field(default_factory=dict)
    lapses: dict[tuple[str, int], Counter[str]] = field(default_factory=dict)
    indexes: dict[str, dict[str, int]] = field(default_factory=dict)
    stations: dict[str, set[str]] = field(default_factory=dict)
    offset: int = 0

    def apply(self, entries: list[fold.Entry]) -> None:
        self.offset += 1
        record = fold.Record("scans", 0, self.offset, entries)
        g = changes.gather([record], UNITS, {OFFSET_FIELD: self.offset - 1})
        held = {
            code: Village(OFFSET_FIELD, dict(self.locs.get(code, {})), bool(self.stations.get(code)))
            for code in g.villages()
        }
        ch = changes.resolve(g, UNITS, held)
        for code, writes in ch.locs.items():
            loc = self.locs.setdefault(code, Counter())
            for name, value in zip(writes[::2], writes[1::2], strict=True):
                loc[name] = value
        for code, counts in ch.regions.items():
            self.regions.setdefault(code, Counter()).update(counts)
        for key, counts in ch.lapses.items():
            self.lapses.setdefault(key, Counter()).update(counts)
        for index, members in ch.indexes.items():
            held_scores = self.indexes.setdefault(index, {})
            for ms, village in zip(members[::2], members[1::2], strict=True):
                held_scores[village] = max(ms, held_scores.get(village, ms))
        for code, ids in ch.stations.items():
            self.stations.setdefault(code, set()).update(ids)

    def withdraw(self, r: retract.Retraction, code: str) -> None:
        loc = self.locs.setdefault(code, Counter())
        loc.update(r.loc_increments)
        loc.update({k: v - loc[k] for k, v in r.loc_set.items()})
        for name in r.loc_delete:
            del loc[name]
        for region, counts in r.regions.items():
            self.regions.setdefault(region, Counter()).update(counts)
        for key, counts in r.lapses.items():
            self.lapses.setdefault(key, Counter()).update(counts)
        for index, members in r.index_set.items():
            self.indexes.setdefault(index, {}).update(dict(zip(members[1::2], members[::2], strict=True)))
        for index, villages in r.index_remove.items():
            for village in villages:
                del self.indexes[index][village]
        self.stations.get(code, set()).difference_update(r.stations_remove)

    def figures(self) -> dict[str, Any]:
        def nonzero(c: Counter[str]) -> dict[str, int]:
            return {k: v for k, v in c.items() if v}

        return {
            "locs": {k: nonzero(v) for k, v in self.locs.items() if nonzero(v)},
            "regions": {k: nonzero(v) for k, v in self.regions.items() if nonzero(v)},
            "lapses": {k: nonzero(v) for k, v in self.lapses.items() if nonzero(v)},
            "indexes": {k: v for k, v in self.indexes.items() if v},
            "stations": {k: v for k, v in self.stations.items() if v},
        }


def expected(survivors: list[scan.ScanEvent]) -> dict[str, Any]:
    """The read model of the surviving events, counted from them with the definitions of docs/read-model.md."""
    locs: dict[str, Counter[str]] = {}
    regions: dict[str, Counter[str]] = {}
    last: dict[str, dict[str, int]] = {}  # village -> suffix -> last reach ms
    stations: dict[str, set[str]] = {}
    for e in survivors:
        ms = int(e.occurred_at.timestamp() * 1000)
        counters = [f.TYPE + e.event_type, f.CARRIER + e.carrier]
        if e.event_type in ("delivered", "picked_up", "collected"):
            counters.append(f.VOLUME + str((e.occurred_at.astimezone(UTC) + BEIJING).year))
        if e.cooperation_model:
            counters.append(f.MODEL + e.cooperation_model)
        code = e.location_code
        for r in (code[:9], code[:6], code[:4], code[:2]):
            regions.setdefault(r, Counter()).update(counters)
        if len(code) != 12:
            continue
        loc = locs.setdefault(code, Counter())
        loc.update(counters)
        if e.station_id:
            stations.setdefault(code, set()).add(e.station_id)
        if e.event_type in ("arrived_at_station", "delivered", "picked_up", "collected"):
            loc[f.FIRST_REACH_MS] = min(loc.get(f.FIRST_REACH_MS, ms), ms)
            dims = [f.CARRIER + e.carrier] + ([f.MODEL + e.cooperation_model] if e.cooperation_model else [])
            for s in ["", *("|" + d for d in dims)]:
                loc[f.REACHED + s] = 1
                loc[f.LAST_REACH_MS + s] = max(loc.get(f.LAST_REACH_MS + s, ms), ms)
                last.setdefault(code, {})[s] = loc[f.LAST_REACH_MS + s]
    lapses: dict[tuple[str, int], Counter[str]] = {}
    indexes: dict[str, dict[str, int]] = {}
    for code, unit in UNITS.items():
        if unit is None or unit.kind != "village":
            continue
        for s, ms in last.get(code, {}).items():
            day = (datetime.fromtimestamp(ms / 1000, UTC) + BEIJING).date().toordinal() - 719163
            for q in unit.segments:
                for r in (code[:9], code[:6], code[:4], code[:2]):
                    regions.setdefault(r, Counter())[f.VILLAGES_REACHED + s + q] += 1
                for r in (code[:4], code[:2]):
                    lapses.setdefault((r, day), Counter())[f.VILLAGES_REACHED + s + q] += 1
                for index in (code[:9] + s + q, code[:6] + s + q):
                    indexes.setdefault(index, {})[code] = ms
        if stations.get(code):
            for q in unit.segments:
                for r in (code[:9], code[:6], code[:4], code[:2]):
                    regions.setdefault(r, Counter())[f.VILLAGES_WITH_STATION + q] += 1
    model = Model(locs, regions, lapses, indexes, stations)
    return model.figures()


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[scan.ScanEvent], list[tuple[str, Any]]]:
    evs = draw(events())
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["apply", "apply", "withdraw", "settle"]))
        if kind == "apply":
            ops.append(("apply", draw(st.lists(st.integers(0, len(evs) - 1), min_size=1, max_size=6))))
        elif kind == "withdraw":
            ops.append(("withdraw", draw(st.integers(0, len(evs) - 1))))
        else:
            ops.append(("settle", draw(st.integers(0, 3))))
    return evs, ops


def stored(ledger: kept.Ledger) -> kept.Ledger:
    """The ledger read back from its stored form: its hash and its packed traces."""
    fields = ledger.floor.fields()
    fields.update({names.ledger.WITHDRAWN + b64(d): f"{day}|{pos}" for d, (day, pos) in ledger.withdrawn.items()})
    return kept.Ledger.of(fields, ledger.packed())


@settings(max_examples=400, deadline=None)
@given(histories())
def test_withdrawing_equals_folding_only_the_surviving_events(history: tuple[list[scan.ScanEvent], list[Any]]) -> None:
    evs, ops = history
    model = Model()
    ledgers: dict[str, kept.Ledger] = {}
    applied: set[int] = set()  # what the dedup memory would drop as a repeat
    counted: set[int] = set()
    pending: dict[int, str] = {}  # event -> the position of the withdrawal waiting for it

    def withdraw(i: int, day: int, position: str) -> kept.Outcome:
        e = evs[i]
        # Each time from the ledger's stored form, as the worker reads it.
        ledger = ledgers[e.location_code] = stored(ledgers.get(e.location_code, kept.Ledger()))
        before = ledger.reach()
        outcome, trace = ledger.withdraw(fold.entry(e).digest, correction.fingerprint(e), day, position)
        if outcome is kept.Outcome.WITHDRAWN:
            assert trace is not None and i in counted
            counted.discard(i)
            unit = UNITS[e.location_code]
            assert unit is not None
            trace = dataclasses.replace(trace, counters=fold.entry(e).counters, station_id=fold.entry(e).station_id)
            model.withdraw(retract.retraction(e.location_code, unit, trace, before, ledger.reach()), e.location_code)
        return outcome

    for day, (op, arg) in enumerate(ops):
        if op == "apply":
            entries = []
            for i in arg:
                if i not in applied:
                    applied.add(i)
                    e = fold.entry(evs[i])
                    ledgers.setdefault(e.location_code, kept.Ledger()).record(kept.Trace.of(e, day * fold.DAY_MS))
                    entries.append(e)
                    counted.add(i)
            model.apply(entries)
        elif op == "withdraw":
            if withdraw(arg, day, f"p{day}") is kept.Outcome.PENDING:
                pending[arg] = f"p{day}"
        else:
            for ledger in ledgers.values():
                ledger.settle(day - arg)
        for i, position in list(pending.items()):  # the worker's resolver, after every step
            if withdraw(i, day, position) is kept.Outcome.WITHDRAWN:
                del pending[i]
    assert model.figures() == expected([evs[i] for i in sorted(counted)])


def test_a_second_withdrawal_is_refused_and_one_that_changes_the_event_is_a_mismatch() -> None:
    ev = scan_event(1, V1, "delivered", "sf", None, None, 1)
    other = scan_event(1, V1, "delivered", "sf", None, None, 2)  # same id, another time
    ledger = kept.Ledger()
    e = fold.entry(ev)
    ledger.record(kept.Trace.of(e, 0))
    assert ledger.withdraw(e.digest, correction.fingerprint(other), 1, "a") == (kept.Outcome.MISMATCH, None)
    assert ledger.withdraw(e.digest, correction.fingerprint(ev), 1, "a")[0] is kept.Outcome.WITHDRAWN
    assert ledger.withdraw(e.digest, correction.fingerprint(ev), 1, "a") == (kept.Outcome.UNCHANGED, None)
    assert ledger.withdraw(e.digest, correction.fingerprint(ev), 2, "b") == (kept.Outcome.ALREADY_WITHDRAWN, None)


def test_a_withdrawal_before_its_original_waits_for_it() -> None:
    ev = scan_event(1, V2, "delivered", "sf", None, "s1", 1)
    e = fold.entry(ev)
    ledger = kept.Ledger()
    assert ledger.withdraw(e.digest, e.fingerprint, 0, "a") == (kept.Outcome.PENDING, None)
    assert ledger.withdraw(e.digest, e.fingerprint, 0, "a") == (kept.Outcome.UNCHANGED, None)
    ledger.record(kept.Trace.of(e, fold.DAY_MS))
    assert ledger.withdraw(e.digest, e.fingerprint, 1, "a")[0] is kept.Outcome.WITHDRAWN
    assert ledger.reach() == kept.Reach(None, {}, frozenset())


def test_the_only_reach_of_a_village_withdrawn_leaves_it_unreached_at_every_level() -> None:
    ev = scan_event(1, V2, "delivered", "sf", "own_station", "s1", 1)
    e = fold.entry(ev)
    ledger = kept.Ledger()
    ledger.record(kept.Trace.of(e, 0))
    before = ledger.reach()
    _, trace = ledger.withdraw(e.digest, e.fingerprint, 1, "a")
    assert trace is not None
    trace = dataclasses.replace(trace, counters=e.counters, station_id=e.station_id)
    r = retract.retraction(V2, changes.Unit("village", ("",)), trace, before, ledger.reach())
    assert r.unreached == 1
    for region in (V2[:9], V2[:6], V2[:4], V2[:2]):
        assert r.regions[region][f.VILLAGES_REACHED] == -1
        assert r.regions[region][f.VILLAGES_REACHED + "|carrier:sf"] == -1
        assert r.regions[region][f.VILLAGES_WITH_STATION] == -1
    assert sorted(r.loc_delete) == sorted(
        [f.FIRST_REACH_MS]
        + [n + s for s in ("", "|carrier:sf", "|model:own_station") for n in (f.REACHED, f.LAST_REACH_MS)]
    )
    assert r.stations_remove == ["s1"]


def test_withdrawing_the_latest_reach_moves_the_village_back_to_its_previous_reach_day() -> None:
    earlier, later = (
        scan_event(1, V2, "delivered", "sf", None, None, 75),
        scan_event(2, V2, "picked_up", "sf", None, None, 1),
    )
    model, ledger = Model(), kept.Ledger()
    entries = [fold.entry(earlier), fold.entry(later)]
    for e in entries:
        ledger.record(kept.Trace.of(e, 0))
    model.apply(entries)
    before = ledger.reach()
    _, trace = ledger.withdraw(entries[1].digest, correction.fingerprint(later), 1, "a")
    assert trace is not None
    model.withdraw(retract.retraction(V2, changes.Unit("village", ("",)), trace, before, ledger.reach()), V2)
    assert model.figures() == expected([earlier])
    assert model.indexes[V2[:6]][V2] == entries[0].occurred_ms
