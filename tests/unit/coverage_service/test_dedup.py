"""The worker's dedup memory answers exactly what a plain set of every applied digest would, hour by hour."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from coverage_service import dedup

HOUR = dedup.HOUR_MS


def d(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()[: dedup.DIGEST_BYTES]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.lists(st.integers(0, 400), max_size=60)), max_size=25))
def test_holds_equals_a_set_of_everything_added(batches: list[tuple[int, list[int]]]) -> None:
    seen = dedup.Seen(window_ms=100 * HOUR)
    added: set[bytes] = set()
    for hour, ids in batches:
        seen.add(hour, b"".join(d(i) for i in ids))
        added.update(d(i) for i in ids)
    probe = list(range(0, 450))
    assert seen.holds(b"".join(d(i) for i in probe)) == [d(i) in added for i in probe]
    assert len(seen) == sum(len(ids) for _, ids in batches)


def test_digests_sharing_their_high_word_are_told_apart() -> None:
    seen = dedup.Seen(window_ms=HOUR)
    a, b, c = (bytes(dedup.DIGEST_BYTES - 1) + bytes([n]) for n in (1, 3, 2))
    seen.add(0, a + b)
    assert seen.holds(a + c + b) == [True, False, True]


def test_an_hour_is_forgotten_when_redis_drops_it_and_not_before() -> None:
    window = 3 * HOUR
    seen = dedup.Seen(window_ms=window)
    seen.add(10, d(1))
    seen.add(11, d(2))
    last_moment = dedup.expires_at_ms(10, window) - 1
    assert last_moment >= 10 * HOUR + window  # a repeat a whole window after the latest moment of hour 10
    seen.forget_before(last_moment)
    assert seen.holds(d(1) + d(2)) == [True, True]
    seen.forget_before(last_moment + 1)
    assert seen.holds(d(1) + d(2)) == [False, True]


def test_window_hours_are_the_hours_not_yet_expired() -> None:
    window = 5 * HOUR + 1234
    now = 100 * HOUR + 777
    hours = list(dedup.window_hours(now, window))
    assert hours == [h for h in range(0, 101) if dedup.expires_at_ms(h, window) > now]
    assert hours[-1] == 100


def test_the_digest_separates_carrier_from_event_id() -> None:
    assert dedup.digest("sf", "1:2") != dedup.digest("sf:1", "2")
    assert len(dedup.digest("sf", "e")) == dedup.DIGEST_BYTES
