"""The backlog and the memory state that ingest refuses posts on, and the refusal it words."""

from __future__ import annotations

import pytest

from ingest_service.backpressure import Backpressure
from lastmile import backlog
from lastmile.settings import Settings


def test_records_behind_counts_each_partition_from_its_applied_offset() -> None:
    ends = {0: 10, 1: 5, 2: 0, 3: 7}
    applied = {"scans:0": 9, "scans:1": 1, "other:3": 6}  # partition 3 of this topic: nothing applied
    assert backlog.records_behind("scans", ends, applied) == 0 + 3 + 0 + 7


@pytest.mark.parametrize(
    ("used", "limit", "full"), [(100, 0, False), (97, 100, False), (98, 100, True), (120, 100, True)]
)
def test_memory_is_full_at_or_just_under_maxmemory(used: int, limit: int, full: bool) -> None:
    assert backlog.Memory(used, limit).full is full


@pytest.mark.parametrize(
    ("records", "bound", "refused"), [(None, 10, False), (10, 10, False), (11, 10, True), (10**6, 0, False)]
)
def test_posts_are_refused_only_past_a_measured_backlog_and_a_set_bound(
    records: int | None, bound: int, refused: bool
) -> None:
    pressure = Backpressure(Settings(ingest_max_backlog_records=bound), None, None)  # type: ignore[arg-type]
    pressure.records = records
    assert (pressure.refusal is not None) is refused
    pressure.memory = backlog.Memory(99, 100)
    if refused:
        assert f"bound {bound:,}" in str(pressure.refusal) and "maxmemory" in str(pressure.refusal)
