"""Several runs of a scenario combine into the median run's figures, whole."""

from __future__ import annotations

import pytest

from lastmile_dev.bench.core import Figure, Result
from lastmile_dev.bench.medians import combine


def run(rate: float | None, ratio: float, exact: bool | None, n: int) -> Result:
    return Result(
        "throughput",
        [
            Figure("rate", rate, "events/s", "≥ 50,000 events/s", rate is not None and rate >= 50_000, note="posted"),
            Figure("ratio", ratio, "×", "≥ 15×", ratio >= 15, baseline=rate, baseline_name="b"),
            Figure("figures exact", 1.0 if exact else 0.0, "", "exact", exact),
        ],
        {"sustained_events_per_s": rate, "n": n},
        exact,
    )


def test_each_figure_is_the_median_run_s_figure_whole() -> None:
    combined = combine([run(900, 3.0, True, 1), run(300, 9.0, True, 2), run(600, 1.0, True, 3)])
    rate, ratio, exact = combined.figures
    assert (rate.value, rate.met) == (600, False)
    assert rate.note == "median of 3 runs (900 events/s, 300 events/s, 600 events/s); posted"
    assert (ratio.value, ratio.baseline) == (3.0, 900)  # its own median run (the first), baseline and all
    assert combined.samples["n"] == 3 and combined.samples["median_of_runs"] == 3  # the first figure's median run
    assert [s["n"] for s in combined.samples["runs"]] == [1, 2, 3]
    assert exact.met is True and combined.exact is True


def test_an_even_count_takes_the_lower_median_and_a_missing_value_counts_lowest() -> None:
    assert combine([run(500, 1, True, 1), run(700, 1, True, 2)]).figures[0].value == 500
    assert combine([run(None, 1, True, 1), run(700, 1, True, 2), run(800, 1, True, 3)]).figures[0].value == 700
    assert combine([run(None, 1, True, 1), run(None, 1, True, 2), run(800, 1, True, 3)]).figures[0].value is None


def test_one_inexact_run_makes_the_scenario_inexact() -> None:
    combined = combine([run(500, 1, True, 1), run(600, 1, False, 2), run(700, 1, True, 3)])
    assert combined.exact is False
    assert combined.figures[2].met is False
    assert combine([run(1, 1, None, 1), run(2, 1, None, 2)]).exact is None


def test_one_run_is_itself_and_none_is_an_error() -> None:
    single = run(500, 1, True, 1)
    assert combine([single]) is single
    with pytest.raises(ValueError):
        combine([])


def test_a_figure_with_its_own_baseline_is_the_median_by_ratio() -> None:
    def scaled(two: float, one: float) -> Result:
        return Result("scaling", [Figure("2 workers", two, "events/s", "≥ 1.6×", two / one >= 1.6, baseline=one)])

    # Values 7,000 / 6,000 / 6,500 would pick 6,500; the ratios 1.75, 1.0, 1.3 pick 1.3, which is 6,500 / 5,000.
    figure = combine([scaled(7000, 4000), scaled(6000, 6000), scaled(6500, 5000)]).figures[0]
    assert (figure.value, figure.baseline) == (6500, 5000)
    figure = combine([scaled(7000, 4000), scaled(6000, 3000), scaled(6500, 5000)]).figures[0]
    assert (figure.value, figure.baseline) == (7000, 4000)  # ratios 1.75, 2.0, 1.3: the middle one is 1.75
