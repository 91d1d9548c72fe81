"""Several runs of one scenario, reported as their medians (the issue asks for medians of several runs).

Each figure is taken whole from the run whose value is its median, so a figure's value, baseline and verdict always
come from one run (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lastmile_dev.bench import report
from lastmile_dev.bench.core import Figure, Result

EXACT_TARGET = "exact"


def combine(results: Sequence[Result]) -> Result:
    if not results:
        raise ValueError("no runs to combine")
    if len(results) == 1:
        return results[0]
    width = min(len(r.figures) for r in results)
    figures = [_figure([r.figures[i] for r in results]) for i in range(width)]
    # The samples of the run that gave the first figure's median (the figure other scenarios read, e.g. the
    # sustained rate), with every run's samples under "runs".
    first = _median_index([r.figures[0] if r.figures else None for r in results])
    samples = {**results[first].samples, "runs": [r.samples for r in results], "median_of_runs": len(results)}
    return Result(results[0].scenario, figures, samples, _exact([r.exact for r in results]))


def _figure(runs: list[Figure]) -> Figure:
    if runs[0].target == EXACT_TARGET:  # the worst run's: one inexact run makes the scenario inexact
        chosen = next((f for f in runs if f.met is False), runs[0])
    else:
        chosen = runs[_median_index(runs)]
    values = ", ".join(report.number(f.value, f.unit) for f in runs)
    note = f"median of {len(runs)} runs ({values})" + (f"; {chosen.note}" if chosen.note else "")
    return dataclasses.replace(chosen, note=note)


def _median_index(figures: Sequence[Figure | None]) -> int:
    """The run whose value is the (lower) median; runs without a value sort first, so they count as lowest."""
    order = sorted(range(len(figures)), key=lambda i: _key(figures[i]))
    return order[(len(order) - 1) // 2]


def _key(figure: Figure | None) -> tuple[int, float]:
    """A figure measured against a baseline of its own run is judged by its ratio to it (two workers against
    one), anything else by its value."""
    if figure is None or figure.value is None:
        return (0, 0.0)
    if figure.baseline and figure.unit != "×":
        return (1, figure.value / figure.baseline)
    return (1, figure.value)


def _exact(values: list[bool | None]) -> bool | None:
    if any(v is False for v in values):
        return False
    if all(v is None for v in values):
        return None
    return True
