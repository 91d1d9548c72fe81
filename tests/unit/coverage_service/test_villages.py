"""The writer's memory of its villages: bounded, kept in step with what it writes, let go per partition."""

from __future__ import annotations

from coverage_service.readmodel import villages


def test_a_village_read_from_redis_is_held_as_numbers_with_its_station_state() -> None:
    v = villages.village("t:0", {"type:delivered": "3", "reached": "1"}, stations=2)
    assert (v.fields, v.stations) == ({"type:delivered": 3, "reached": 1}, True)
    assert villages.village("t:0", {}, stations=None).stations is None  # not read


def test_what_is_written_updates_the_held_villages_only() -> None:
    held = villages.Villages(10)
    held.keep("a", villages.village("t:0", {"type:delivered": "3"}, stations=0))
    held.written({"a": ["type:delivered", 5, "reached", 1], "b": ["reached", 1]}, stations=["a", "b"])
    a = held.get("a")
    assert a is not None and a.fields == {"type:delivered": 5, "reached": 1} and a.stations is True
    assert held.get("b") is None  # never read: not made up


def test_the_longest_held_are_let_go_first_and_partitions_are_forgotten_whole() -> None:
    held = villages.Villages(3)
    for code, part in [("a", "t:0"), ("b", "t:1"), ("c", "t:0"), ("d", "t:1")]:
        held.keep(code, villages.village(part, {}, None))
    assert [c for c in "abcd" if held.get(c)] == ["b", "c", "d"]
    held.forget(["t:1"])
    assert [c for c in "abcd" if held.get(c)] == ["c"]
    none = villages.Villages(0)
    none.keep("a", villages.village("t:0", {}, None))
    assert len(none) == 0
