"""The load generator: valid events, re-sends only across batches, and expectations that match a recount.

The bench's exactness checks trust :meth:`Generator.expected`; here it is checked against a plain recount of
the events the generator returned, done with the definitions (docs/reading-coverage.md) and the registry's CSV kinds.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from lastmile import scan
from lastmile.registry import BUNDLED, Registry, read_registry
from lastmile_dev.bench.generator import PROBE_CARRIER, Generator

SAMPLE = BUNDLED["sample"]
REACH = {"arrived_at_station", "delivered", "picked_up", "collected"}  # docs/reading-coverage.md, "Definitions"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return read_registry(SAMPLE)


def test_batches_are_valid_single_carrier_and_never_repeat_an_event_within(registry: Registry) -> None:
    gen = Generator(registry, seed=3)
    codes = {u.code for u in registry.units()}
    now = datetime.now(UTC)
    for _ in range(30):
        batch = gen.next_batch(400)
        assert len(batch) == 400
        assert len({e["carrier"] for e in batch}) == 1
        assert len({e["event_id"] for e in batch}) == len(batch)
        for event in batch:
            assert isinstance(scan.validate(event, now=now, carrier=event["carrier"]), scan.ScanEvent), event
            assert event["location_code"] in codes


def test_expected_equals_a_recount_of_the_distinct_events(registry: Registry) -> None:
    gen = Generator(registry, seed=11)
    kind = {u.code: u.kind for u in registry.villages}
    sent = [e for _ in range(40) for e in gen.next_batch(250)]
    sent.append(gen.probe(PROBE_CARRIER, next(c for c, k in kind.items() if k == "village")))
    distinct: dict[tuple[str, str], dict[str, object]] = {}
    for event in sent:
        key = (str(event["carrier"]), str(event["event_id"]))
        assert distinct.setdefault(key, event) == event  # a re-send is the same event, unchanged
    reached = {
        str(e["location_code"])
        for e in distinct.values()
        if e["event_type"] in REACH and kind.get(str(e["location_code"])) == "village"
    }
    counties = Counter(code[:6] for code in reached)
    provinces = Counter(code[:2] for code in reached)

    expected = gen.expected()
    assert expected["events_distinct"] == len(distinct)
    assert expected["duplicates_sent"] == len(sent) - len(distinct) > 0
    assert expected["by_type"] == dict(Counter(str(e["event_type"]) for e in distinct.values()))
    assert expected["villages_reached"] == {"CN": len(reached), **counties, **provinces}


def test_events_are_skewed_late_and_mixed(registry: Registry) -> None:
    gen = Generator(registry, seed=5)
    events = [e for _ in range(20) for e in gen.next_batch(500)]
    now = datetime.now(UTC)
    ages = [(now - datetime.fromisoformat(e["occurred_at"])).total_seconds() for e in events]
    assert any(age > 3600 for age in ages) and any(age < 600 for age in ages)
    assert any(b < a for a, b in itertools.pairwise(ages))  # out of order
    per_county = Counter(e["location_code"][:6] for e in events)
    assert max(per_county.values()) > 1.3 * min(per_county.values())  # Zipf-like, not uniform
    types = Counter(e["event_type"] for e in events)
    assert sum(types[t] for t in REACH) > len(events) / 2
    assert len(types) == len(scan.EVENT_TYPES)
    assert any("station_id" in e for e in events) and any("cooperation_model" in e for e in events)


def test_the_same_seed_gives_the_same_events(registry: Registry) -> None:
    first, second = Generator(registry, seed=9), Generator(registry, seed=9)
    a = [first.next_batch(100) for _ in range(5)]
    b = [second.next_batch(100) for _ in range(5)]
    strip = [[{k: v for k, v in e.items() if k != "occurred_at"} for e in batch] for batch in a]
    assert strip == [[{k: v for k, v in e.items() if k != "occurred_at"} for e in batch] for batch in b]
    assert Generator(registry, seed=10).next_batch(1)[0]["event_id"] != a[0][0]["event_id"]


def test_prebuilt_batches_count_only_once_posted_and_unsent_ones_are_never_resent(registry: Registry) -> None:
    gen = Generator(registry, seed=17)
    kind = {u.code: u.kind for u in registry.villages}
    before = gen.expected()
    built = gen.prebuild(30, 200)
    assert gen.expected() == before  # nothing is counted until it is posted
    posted, unsent = built[:18], built[18:]
    for batch in posted:
        gen.posted(batch)
    gen.unsent(unsent)
    sent = [e for batch in posted for e in orjson.loads(batch.body)["events"]]
    assert all(e["carrier"] == batch.carrier for batch in posted for e in orjson.loads(batch.body)["events"])
    # Batches made after the phase may re-send only events that were sent.
    sent_ids = {(e["carrier"], e["event_id"]) for e in sent}
    later = [e for _ in range(20) for e in gen.next_batch(200)]
    later_ids = {(e["carrier"], e["event_id"]) for e in later}
    never_sent = {
        (e["carrier"], e["event_id"]) for batch in unsent for e in orjson.loads(batch.body)["events"]
    } - sent_ids
    assert not later_ids & never_sent
    assert later_ids & sent_ids  # some are re-sends of the posted batches

    distinct = {(e["carrier"], e["event_id"]): e for e in sent + later}
    reached = {
        str(e["location_code"])
        for e in distinct.values()
        if e["event_type"] in REACH and kind.get(str(e["location_code"])) == "village"
    }
    expected = gen.expected()
    assert expected["events_distinct"] == len(distinct)
    assert expected["duplicates_sent"] == len(sent) + len(later) - len(distinct)
    assert expected["by_type"] == dict(Counter(str(e["event_type"]) for e in distinct.values()))
    assert expected["villages_reached"]["CN"] == len(reached)
