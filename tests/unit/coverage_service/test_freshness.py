from coverage_service.api.documents import marked
from coverage_service.api.freshness import is_stale


def test_stale_needs_records_waiting_and_no_batch_applied_for_the_bound() -> None:
    now = 1_000_000
    assert not is_stale(0, None, now, 60)  # nothing waits: an idle pipeline is not behind
    assert not is_stale(0, now - 3_600_000, now, 60)
    assert not is_stale(5, now - 60_000, now, 60)  # at the bound, not past it
    assert is_stale(5, now - 60_001, now, 60)
    assert is_stale(1, None, now, 60)  # records wait and nothing was ever applied


def test_stale_is_put_beside_as_of_or_at_the_end() -> None:
    assert list(marked({"code": "14", "as_of": None, "children": []}, True)) == ["code", "as_of", "stale", "children"]
    assert marked({"code": "140322100201", "reached": True}, False) == {
        "code": "140322100201",
        "reached": True,
        "stale": False,
    }
