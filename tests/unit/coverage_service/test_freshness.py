from coverage_service.api.documents import marked
from coverage_service.api.freshness import is_stale
from coverage_service.worker.health import State, readiness


def test_stale_needs_records_waiting_and_no_batch_applied_for_the_bound() -> None:
    now = 10_000_000
    assert not is_stale(0, None, now - 120_000, now, 60)  # nothing waits: an idle pipeline is not behind
    assert not is_stale(5, now - 60_000, now - 90_000, now, 60)  # at the bound, not past it
    assert is_stale(5, now - 60_001, now - 90_000, now, 60)
    assert is_stale(1, None, now - 60_001, now, 60)  # records wait and nothing was ever applied
    # A record after a quiet hour: the last batch is an hour old, but it has waited only a second.
    assert not is_stale(1, now - 3_600_000, now - 1_000, now, 60)
    assert is_stale(1, now - 3_600_000, now - 61_000, now, 60)


def test_stale_is_put_beside_as_of_or_at_the_end() -> None:
    assert list(marked({"code": "14", "as_of": None, "children": []}, True)) == ["code", "as_of", "stale", "children"]
    assert marked({"code": "140322100201", "reached": True}, False) == {
        "code": "140322100201",
        "reached": True,
        "stale": False,
    }


def test_a_worker_is_not_taken_for_stalled_by_a_record_after_a_quiet_hour() -> None:
    now = 10_000.0
    quiet = State(assigned=2, behind={0: 1, 1: 0}, last_applied_s=now - 3600, totals={})
    assert readiness(quiet, 30, now, waiting_since_s=now - 1)[0]
    ready, why = readiness(quiet, 30, now, waiting_since_s=now - 31)
    assert not ready and "1 records to apply" in why
    assert readiness(State(2, {0: 0}, None, {}), 30, now)[0]  # caught up
    assert not readiness(State(0, {}, now, {}), 30, now)[0]  # no partitions
