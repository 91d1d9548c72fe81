"""How the worker groups a taken batch of records into apply calls: whole records, in order, events bounded."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from coverage_service.fold import Entry, Record
from coverage_service.worker.folder import calls

ENTRY = Entry(b"d" * 8, "110101001001", 0, False, (), ())


def record(offset: int, events: int) -> Record:
    return Record("scans", offset % 3, offset, [ENTRY] * events)


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=60), st.integers(min_value=1, max_value=50))
def test_calls_keep_records_whole_in_order_and_bounded(sizes: list[int], max_events: int) -> None:
    records = [record(i, n) for i, n in enumerate(sizes)]
    groups = calls(records, max_events)
    assert [r for g in groups for r in g] == records  # every record once, in order, none split
    for g in groups:
        load = sum(max(1, len(r.entries)) for r in g)
        # Over the bound only as a single record bigger than it.
        assert load <= max_events or len(g) == 1
    for a, b in itertools.pairwise(groups):
        # A group is closed only when the next record would not fit in it.
        assert sum(max(1, len(r.entries)) for r in a) + max(1, len(b[0].entries)) > max_events


def test_no_records_is_one_empty_call() -> None:
    assert calls([], 10) == [[]]


def test_records_without_events_still_count_toward_the_bound() -> None:
    groups = calls([record(i, 0) for i in range(5)], 2)
    assert [len(g) for g in groups] == [2, 2, 1]
