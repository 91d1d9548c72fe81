"""The worker's decisions: what a batch changes, given the registry and what its villages hold. No Redis.

Expected writes are counted here from the events themselves (regions above a code, flags per carrier), not with the
module under test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec.msgpack as msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from coverage_service import changes, fold, ledger
from lastmile import scan

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
V1, V2, OTHER_COUNTY = "140322205206", "140322205207", "411702001200"
COMMUNITY, TOWNSHIP = "140322205208", "140322205"
VILLAGE = changes.Unit("village", ("",))
BIG_VILLAGE = changes.Unit("village", ("", "@p2500"))
UNITS: dict[str, changes.Unit | None] = {
    V1: BIG_VILLAGE,
    V2: VILLAGE,
    OTHER_COUNTY: VILLAGE,
    COMMUNITY: changes.Unit("community", ()),
    TOWNSHIP: changes.Unit("township", ()),
}


def above(code: str) -> list[str]:
    return [code[:9], code[:6], code[:4], code[:2]]  # no nation: its figures are the provinces' summed


def event(
    i: int, code: str = V1, *, carrier: str = "sf", kind: str = "delivered", hours: int = 1, **more: Any
) -> fold.Entry:
    raw = {
        "event_id": f"e{i}",
        "carrier": carrier,
        "waybill": f"W{i}",
        "event_type": kind,
        "location_code": code,
        "occurred_at": (NOW - timedelta(hours=hours)).isoformat(),
        **({"reason": "away"} if kind == "delivery_failed" else {}),
        **more,
    }
    parsed = scan.validate(raw, now=NOW)
    assert isinstance(parsed, scan.ScanEvent), parsed
    return fold.entry(parsed)


def ms(hours: int) -> int:
    return int((NOW - timedelta(hours=hours)).timestamp() * 1000)


@dataclass
class Held:
    """A village's state as the writer hands it to :func:`changes.resolve`."""

    fields: dict[str, int]
    stations: bool | None = False


def empty(g: changes.Gathered) -> dict[str, changes.Held]:
    return {code: Held({}) for code in g.villages()}


def test_replays_are_skipped_per_partition_and_unknown_codes_neither_counted_nor_remembered() -> None:
    a, b, stray = event(1), event(2, V2), event(3, "999999999999")
    records = [
        fold.Record("t", 0, 4, [event(9)]),  # at the stored offset: applied before
        fold.Record("t", 0, 6, [b, stray], dead_letters=2, duplicates=1),
        fold.Record("t", 0, 5, [a]),
        fold.Record("t", 1, 0, []),  # nothing left in it, but its offset moves
    ]
    g = changes.gather(records, UNITS, {"t:0": 4, "t:1": -1})
    assert (g.records_replayed, g.records_applied) == (1, 3)
    assert (g.applied, g.unknown, g.dead_letters, g.duplicate) == (2, 1, 2, 1)
    assert g.offsets == {"t:0": 6, "t:1": 0}
    assert g.digests == {"t:0": [a.digest, b.digest], "t:1": []}  # in offset order; the stray's left out
    assert set(g.locations) == {V1, V2}


def test_a_new_village_is_reached_in_every_region_above_it_in_each_segment_and_dimension() -> None:
    e = event(1, V1, carrier="zto", cooperation_model="postal_express", station_id="S1", hours=3)
    g = changes.gather([fold.Record("t", 0, 0, [e])], UNITS, {"t:0": -1})
    ch = changes.resolve(g, UNITS, empty(g))
    flags = ["", "|carrier:zto", "|model:postal_express"]
    for region in above(V1):
        expected = {f"villages_reached{s}{q}": 1 for s in flags for q in ("", "@p2500")}
        expected |= {"villages_with_station": 1, "villages_with_station@p2500": 1}
        expected |= {c: 1 for c in e.counters}
        assert ch.regions[region] == expected, region
        assert ch.as_of[region] == ms(3)
    assert set(ch.indexes) == {f"{r}{s}{q}" for r in (V1[:9], V1[:6]) for s in flags for q in ("", "@p2500")}
    assert all(members == [ms(3), V1] for members in ch.indexes.values())
    writes = dict(zip(ch.locs[V1][::2], ch.locs[V1][1::2], strict=True))
    assert writes == {
        **{c: 1 for c in e.counters},
        "first_reach_ms": ms(3),
        **{f"reached{s}": 1 for s in flags},
        **{f"last_reach_ms{s}": ms(3) for s in flags},
    }
    assert ch.stations == {V1: ["S1"]}
    assert ch.newly_reached == 1


def test_what_a_village_holds_decides_what_moves() -> None:
    """Already reached by sf with a later reach, stations held: counters add up, nothing else moves but zto's flag
    (new) and the first reach (earlier)."""
    g = changes.gather(
        [fold.Record("t", 0, 0, [event(1, V2, hours=5, station_id="S2"), event(2, V2, carrier="zto", hours=6)])],
        UNITS,
        {"t:0": -1},
    )
    now = {
        "type:delivered": 7,
        "carrier:sf": 4,
        "first_reach_ms": ms(1),
        "reached": 1,
        "last_reach_ms": ms(1),
        "reached|carrier:sf": 1,
        "last_reach_ms|carrier:sf": ms(1),
    }
    held = {V2: Held(now, stations=True)}
    ch = changes.resolve(g, UNITS, held)
    writes = dict(zip(ch.locs[V2][::2], ch.locs[V2][1::2], strict=True))
    assert writes["type:delivered"] == 9 and writes["carrier:sf"] == 5 and writes["carrier:zto"] == 1
    assert writes["first_reach_ms"] == ms(6)
    assert "reached" not in writes and "last_reach_ms" not in writes and "reached|carrier:sf" not in writes
    assert writes["reached|carrier:zto"] == 1 and writes["last_reach_ms|carrier:zto"] == ms(6)
    for region in above(V2):
        assert ch.regions[region].get("villages_reached") is None
        assert ch.regions[region]["villages_reached|carrier:zto"] == 1
        assert "villages_with_station" not in ch.regions[region]  # it had a station already
    assert set(ch.indexes) == {f"{r}|carrier:zto" for r in (V2[:9], V2[:6])}
    assert ch.newly_reached == 0


def test_non_villages_count_parcels_but_no_coverage() -> None:
    g = changes.gather(
        [fold.Record("t", 0, 0, [event(1, COMMUNITY), event(2, TOWNSHIP, kind="arrived_at_hub")])], UNITS, {"t:0": -1}
    )
    ch = changes.resolve(g, UNITS, empty(g))
    assert list(g.villages()) == [COMMUNITY]  # a township's own code has no loc: hash
    assert ch.indexes == {} and ch.newly_reached == 0
    assert ch.regions[TOWNSHIP] == {"type:delivered": 1, "carrier:sf": 2, "vol:2024": 1, "type:arrived_at_hub": 1}
    assert ch.locs[COMMUNITY][ch.locs[COMMUNITY].index("reached") + 1] == 1  # its flag, for its own page


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([V1, V2, OTHER_COUNTY, COMMUNITY, TOWNSHIP]),
            st.sampled_from(["sf", "zto"]),
            st.sampled_from(scan.EVENT_TYPES),
            st.integers(0, 48),
        ),
        max_size=40,
    )
)
def test_counters_of_every_region_equal_a_count_of_the_events(rows: list[tuple[str, str, str, int]]) -> None:
    entries = [
        event(
            i,
            code,
            carrier=carrier,
            kind=kind if len(code) == 12 or kind not in scan.VILLAGE_ONLY_TYPES else "arrived_at_hub",
            hours=h,
        )
        for i, (code, carrier, kind, h) in enumerate(rows)
    ]
    g = changes.gather([fold.Record("t", 0, 0, entries)], UNITS, {"t:0": -1})
    ch = changes.resolve(g, UNITS, empty(g))
    expected: dict[str, Counter[str]] = {}
    newest: dict[str, int] = {}
    for e in entries:
        for region in above(e.location_code):
            expected.setdefault(region, Counter()).update(e.counters)
            newest[region] = max(newest.get(region, -1), e.occurred_ms)
    counted = {r: Counter({k: v for k, v in f.items() if not k.startswith("villages_")}) for r, f in ch.regions.items()}
    assert counted == expected
    assert ch.as_of == newest
    reached = {e.location_code for e in entries if e.reaches and UNITS[e.location_code] in (VILLAGE, BIG_VILLAGE)}
    assert ch.newly_reached == len(reached)
    provinces = [f for code, f in ch.regions.items() if len(code) == 2]
    assert sum(f.get("villages_reached", 0) for f in provinces) == len(reached)
    assert "CN" not in ch.regions


def test_the_payload_carries_the_writes_one_digest_string_per_partition_and_the_traces_per_location() -> None:
    a, b = event(1), event(2, V2)
    g = changes.gather([fold.Record("t", 1, 3, [b]), fold.Record("t", 0, 5, [a])], UNITS, {"t:0": 4, "t:1": -1})
    ch = changes.resolve(g, UNITS, empty(g))
    body, *strings = changes.payload("14", g, ch, {"t:0": 4, "t:1": -1}, "gen-7", 11, 12345)
    digests, traces = strings[:2], strings[2:]
    wire = msgpack.decode(body)
    assert (wire["shard"], wire["expect"], wire["registry"], wire["hour"], wire["expire_at"]) == (
        "14",
        {"t:0": 4, "t:1": -1},
        "gen-7",
        11,
        12345,
    )
    assert wire["offsets"] == ["t:0", 5, "t:1", 3]
    assert wire["digests"] == ["t:0", "t:1"] and digests == [a.digest, b.digest]
    assert wire["stats"] == [2, 0, 0, 2, 0, 2, 0]
    # Each location's traces, in the order the payload names the locations.
    assert [[t.key for t in ledger.unpack(p)] for p in traces] == [
        [e.digest[: ledger.KEY_BYTES]] for e in sorted((a, b), key=lambda e: wire["ledger"].index(e.location_code))
    ]
    regions = dict(zip(wire["regions"][::3], wire["regions"][1::3], strict=True))
    assert regions[V1[:2]]["villages_reached"] == 2 and V1[:2] == V2[:2]
    assert wire["locs"][::2] == [V1, V2] or wire["locs"][::2] == [V2, V1]
