"""Milestone configuration, milestone status and the laggards ranking; every expected value by hand."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from coverage_service.reports import targets
from coverage_service.reports.targets import Count, Milestone, Pace
from lastmile.settings import SettingsError

TODAY = date(2024, 6, 1)


def m(deadline: str, rate: str) -> Milestone:
    return Milestone(date.fromisoformat(deadline), Decimal(rate))


# -- configuration ---------------------------------------------------------------------------------


def test_empty_setting_gives_the_programme_default() -> None:
    parsed = targets.parse("", "COVERAGE_TARGETS")
    assert parsed.default == (m("2021-12-31", "0.90"), m("2022-12-31", "1.00"))
    assert parsed.for_code("14") == ("default", parsed.default)


def test_a_list_is_the_default_for_every_region_sorted_by_deadline() -> None:
    text = '[{"deadline": "2025-12-31", "min_rate": 1}, {"deadline": "2025-06-30", "min_rate": 0.75}]'
    parsed = targets.parse(text, "COVERAGE_TARGETS")
    assert parsed.default == (m("2025-06-30", "0.75"), m("2025-12-31", "1"))
    assert parsed.for_code("140322100") == ("default", parsed.default)
    assert parsed.for_code("CN") == ("default", parsed.default)


def test_the_longest_matching_prefix_wins() -> None:
    text = json.dumps(
        {
            "overrides": {
                "14": [{"deadline": "2023-12-31", "min_rate": 0.8}],
                "140322": [{"deadline": "2024-12-31", "min_rate": 0.95}],
            },
        }
    )
    parsed = targets.parse(text, "COVERAGE_TARGETS")
    assert parsed.default == targets.DEFAULT_MILESTONES  # "default" left out
    assert parsed.for_code("140322100") == ("140322", (m("2024-12-31", "0.95"),))
    assert parsed.for_code("140322") == ("140322", (m("2024-12-31", "0.95"),))
    assert parsed.for_code("1403") == ("14", (m("2023-12-31", "0.8"),))
    assert parsed.for_code("140321") == ("14", (m("2023-12-31", "0.8"),))
    assert parsed.for_code("15") == ("default", targets.DEFAULT_MILESTONES)
    assert parsed.for_code("CN") == ("default", targets.DEFAULT_MILESTONES)


def test_rates_are_exact() -> None:
    # 0.9 * 10 is 9.000000000000002 in floating point; the milestone needs 9 villages, not 10.
    assert m("2021-12-31", "0.9").villages_required(10) == 9
    assert targets.parse('[{"deadline": "2021-12-31", "min_rate": 0.9}]', "X").default[0].villages_required(10) == 9
    assert m("2021-12-31", "0.9").villages_required(11) == 10  # 9.9 villages: 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "COVERAGE_TARGETS: not JSON"),
        ('"x"', "COVERAGE_TARGETS: expected a list of milestones"),
        ("[]", "COVERAGE_TARGETS: milestones must be a non-empty list"),
        ('{"defaults": []}', "COVERAGE_TARGETS: unknown key 'defaults'"),
        ('[{"deadline": "2021-12-31"}]', "COVERAGE_TARGETS: milestones[0]: missing 'min_rate'"),
        ('[{"deadline": "2021-12-31", "min_rate": 0.9, "x": 1}]', "COVERAGE_TARGETS: milestones[0]: unknown key 'x'"),
        ('[{"deadline": "2021-13-31", "min_rate": 0.9}]', 'milestones[0].deadline: "2021-13-31" is not a date'),
        ('[{"deadline": "20211231", "min_rate": 0.9}]', 'milestones[0].deadline: "20211231" is not a date'),
        ('[{"deadline": "2021-12-31", "min_rate": 1.5}]', "milestones[0].min_rate: 1.5 is not a number"),
        ('[{"deadline": "2021-12-31", "min_rate": 0}]', "milestones[0].min_rate: 0 is not a number above 0"),
        ('[{"deadline": "2021-12-31", "min_rate": "0.9"}]', 'milestones[0].min_rate: "0.9" is not a number'),
        ('[{"deadline": "2021-12-31", "min_rate": true}]', "milestones[0].min_rate: true is not a number"),
        (
            '[{"deadline": "2021-12-31", "min_rate": 0.9}, {"deadline": "2021-12-31", "min_rate": 1}]',
            "milestones has deadline 2021-12-31 more than once",
        ),
        ('{"overrides": {"1": [{"deadline": "2021-12-31", "min_rate": 1}]}}', "overrides key '1' is not a 2, 4, 6"),
        ('{"overrides": []}', "COVERAGE_TARGETS: overrides must be an object"),
        (
            '{"overrides": {"14": [{"deadline": "2021-12-31", "min_rate": 2}]}}',
            "COVERAGE_TARGETS: overrides['14'][0].min_rate: 2 is not a number",
        ),
    ],
)
def test_configuration_errors_name_the_setting_and_the_entry(text: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        targets.parse(text, "COVERAGE_TARGETS")
    assert message in str(raised.value)
    assert str(raised.value).startswith("COVERAGE_TARGETS: ")


# -- status ----------------------------------------------------------------------------------------


def status(milestone: Milestone, now: Count, **kw: Any) -> targets.MilestoneStatus:
    return targets.status(milestone, now, TODAY, at_deadline=kw.get("at_deadline"), pace=kw.get("pace"))


def test_a_passed_deadline_not_met_is_missed_with_the_current_gap() -> None:
    s = status(m("2021-12-31", "0.9"), Count(total=10, reached=6))
    assert (s["status"], s["basis"]) == ("missed", "current_figures")
    assert (s["villages_required"], s["gap"], s["days_left"]) == (9, 3, 0)
    assert (s["needed_villages_per_day"], s["needed_rate_per_day"], s["at_deadline"]) == (None, None, None)


def test_a_passed_deadline_met_now_is_met_without_a_snapshot() -> None:
    s = status(m("2021-12-31", "0.9"), Count(total=10, reached=9))
    assert (s["status"], s["basis"], s["gap"]) == ("met", "current_figures", 0)


def test_the_deadline_day_snapshot_decides_a_passed_milestone() -> None:
    # Met now (9 of 10) but not on the day: missed.
    s = status(m("2021-12-31", "0.9"), Count(10, 9), at_deadline=Count(10, 8))
    assert (s["status"], s["basis"], s["gap"]) == ("missed", "deadline_snapshot", 0)
    assert s["at_deadline"] == {"date": "2021-12-31", "villages_total": 10, "villages_reached": 8}
    # Not met now (the registry grew) but met on the day: met.
    s = status(m("2021-12-31", "0.9"), Count(20, 9), at_deadline=Count(10, 9))
    assert (s["status"], s["basis"], s["gap"]) == ("met", "deadline_snapshot", 9)


def test_a_future_milestone_already_reached_is_met() -> None:
    s = status(m("2024-12-31", "0.5"), Count(10, 5))
    assert (s["status"], s["basis"], s["gap"]) == ("met", "current_figures", 0)
    assert (s["days_left"], s["needed_villages_per_day"], s["needed_rate_per_day"]) == (214, 0.0, 0.0)


def test_on_track_and_at_risk_compare_the_needed_pace_with_the_recent_one() -> None:
    # 2024-06-10 is 10 days away counting today and the deadline day; 8 of 100 villages to go: 0.8 a day.
    milestone, now = m("2024-06-10", "0.5"), Count(100, 42)
    fast = Pace(since=date(2024, 5, 2), villages=24, days=30)  # 0.8 a day: exactly enough
    slow = Pace(since=date(2024, 5, 2), villages=23, days=30)
    s = status(milestone, now, pace=fast)
    assert (s["status"], s["basis"], s["gap"], s["days_left"]) == ("on track", "recent_pace", 8, 10)
    assert (s["needed_villages_per_day"], s["needed_rate_per_day"]) == (0.8, 0.008)
    assert status(milestone, now, pace=slow)["status"] == "at risk"


def test_without_history_an_unmet_future_milestone_is_at_risk() -> None:
    s = status(m("2024-06-10", "0.5"), Count(100, 42))
    assert (s["status"], s["basis"]) == ("at risk", "no_history")


def test_on_the_deadline_day_the_milestone_is_still_open_with_one_day_left() -> None:
    s = status(m("2024-06-01", "1"), Count(4, 3), pace=Pace(date(2024, 5, 31), villages=1, days=1))
    assert (s["status"], s["days_left"], s["needed_villages_per_day"], s["needed_rate_per_day"]) == (
        "on track",
        1,
        1.0,
        0.25,
    )


def test_a_region_without_villages_meets_every_milestone() -> None:
    s = status(m("2024-12-31", "1"), Count(0, 0))
    assert (s["status"], s["gap"], s["needed_rate_per_day"]) == ("met", 0, None)


def test_the_pace_baseline_is_the_earliest_snapshot_of_the_last_30_days() -> None:
    days = [date(2024, 4, 1), date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 20), date(2024, 6, 1)]
    assert targets.baseline_date(days, TODAY) == date(2024, 5, 2)  # 2024-05-02 is 30 days before
    assert targets.baseline_date([date(2024, 4, 1), date(2024, 4, 20), TODAY], TODAY) == date(2024, 4, 20)
    assert targets.baseline_date([TODAY], TODAY) is None  # today's own snapshot measures nothing
    assert targets.baseline_date([], TODAY) is None
    pace = targets.pace_since(date(2024, 5, 2), Count(10, 3), Count(10, 9), TODAY)
    assert (pace.villages, pace.days, pace.per_day) == (6, 30, 0.2)


# -- laggards --------------------------------------------------------------------------------------


def unit(code: str, total: int, reached: int, lapsed: int = 0) -> dict[str, Any]:
    return {
        "code": code,
        "name": f"n{code}",
        "level": "township",
        "villages_total": total,
        "villages_reached": reached,
        "coverage_rate": reached / total if total else None,
        "villages_active": reached - lapsed,
        "villages_lapsed": lapsed,
        "villages_with_station": reached // 2,
    }


def test_laggards_rank_by_rate_then_by_gap_then_by_code() -> None:
    units = [
        unit("140322100", 10, 6),
        unit("140322101", 2, 1),  # 0.5, gap 1
        unit("140322102", 4, 2, lapsed=1),  # 0.5, gap 2: before 101 despite its code
        unit("140322103", 0, 0),  # no villages: left out
        unit("140322104", 3, 0),
        unit("140322105", 2, 1),  # 0.5, gap 1: after 101 by code
    ]
    rows, left_out = targets.rank_laggards(units, limit=10)
    assert [(r["rank"], r["code"], r["gap"]) for r in rows] == [
        (1, "140322104", 3),
        (2, "140322102", 2),
        (3, "140322101", 1),
        (4, "140322105", 1),
        (5, "140322100", 4),
    ]
    assert left_out == 1
    assert (rows[1]["villages_lapsed"], rows[1]["villages_active"], rows[1]["villages_with_station"]) == (1, 1, 1)
    rows, left_out = targets.rank_laggards(units, limit=2)
    assert [r["code"] for r in rows] == ["140322104", "140322102"] and left_out == 1
