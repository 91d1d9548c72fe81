"""Coverage milestones (targets), their status for a region, and the laggards ranking. Pure; no I/O.

Regulators run the programme against deadlines ("90% of villages by end 2021, all by end 2022"), so they need to know,
per milestone, whether it is met, how many villages are missing and how fast the region must now move. The
configuration format and the statuses are on docs/reports.md; :data:`DEFINITION` goes out with every answer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

from typing_extensions import TypedDict

from lastmile import divisions
from lastmile.settings import SettingsError

MET: Final = "met"
MISSED: Final = "missed"
ON_TRACK: Final = "on track"
AT_RISK: Final = "at risk"
STATUSES: Final = (MET, MISSED, ON_TRACK, AT_RISK)

# What decided a status.
BASIS_CURRENT: Final = "current_figures"
BASIS_DEADLINE_SNAPSHOT: Final = "deadline_snapshot"
BASIS_PACE: Final = "recent_pace"
BASIS_NO_PACE: Final = "no_history"

PACE_WINDOW_DAYS: Final = 30
DEFAULT_SOURCE: Final = "default"


@dataclass(frozen=True, slots=True)
class Milestone:
    deadline: date
    min_rate: Decimal  # exact: 0.9 stays 9/10

    def villages_required(self, total: int) -> int:
        """The fewest reached villages that meet this milestone in a region of ``total`` villages (exactly: 0.9 of
        10 villages is 9, never 10 through float error)."""
        return math.ceil(self.min_rate * total)


DEFAULT_MILESTONES: Final = (
    Milestone(date(2021, 12, 31), Decimal("0.90")),
    Milestone(date(2022, 12, 31), Decimal("1.00")),
)


@dataclass(frozen=True, slots=True)
class Targets:
    default: tuple[Milestone, ...] = DEFAULT_MILESTONES
    overrides: Mapping[str, tuple[Milestone, ...]] = field(default_factory=dict)

    def for_code(self, code: str) -> tuple[str, tuple[Milestone, ...]]:
        """(where the milestones come from: ``default`` or the override's prefix, the milestones)."""
        for n in (9, 6, 4, 2):
            prefix = code[:n]
            if len(code) >= n and prefix in self.overrides:
                return prefix, self.overrides[prefix]
        return DEFAULT_SOURCE, self.default


# -- Parsing --------------------------------------------------------------------------------------


def parse(text: str, setting: str) -> Targets:
    """The targets in ``text``, or a :class:`SettingsError` naming ``setting`` and the faulty entry."""
    if not text.strip():
        return Targets()
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{setting}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if isinstance(data, list):
        return Targets(default=_milestones(data, setting, "milestones"))
    if not isinstance(data, dict):
        raise SettingsError(f'{setting}: expected a list of milestones or {{"default": [...], "overrides": {{...}}}}')
    unknown = sorted(set(data) - {"default", "overrides"})
    if unknown:
        raise SettingsError(f"{setting}: unknown key {unknown[0]!r}; expected 'default' and 'overrides'")
    default = _milestones(data["default"], setting, "default") if "default" in data else DEFAULT_MILESTONES
    raw_overrides = data.get("overrides", {})
    if not isinstance(raw_overrides, dict):
        raise SettingsError(f'{setting}: overrides must be an object {{"<code prefix>": [milestones]}}')
    overrides: dict[str, tuple[Milestone, ...]] = {}
    for prefix, entries in raw_overrides.items():
        if not divisions.is_region_code(prefix):
            raise SettingsError(f"{setting}: overrides key {prefix!r} is not a 2, 4, 6 or 9-digit division code prefix")
        overrides[prefix] = _milestones(entries, setting, f"overrides[{prefix!r}]")
    return Targets(default=default, overrides=overrides)


def _milestones(entries: Any, setting: str, where: str) -> tuple[Milestone, ...]:
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"{setting}: {where} must be a non-empty list of milestones")
    out = [_milestone(e, setting, f"{where}[{i}]") for i, e in enumerate(entries)]
    deadlines = [m.deadline for m in out]
    repeated = sorted({d for d in deadlines if deadlines.count(d) > 1})
    if repeated:
        raise SettingsError(f"{setting}: {where} has deadline {repeated[0].isoformat()} more than once")
    return tuple(sorted(out, key=lambda m: m.deadline))


def _milestone(entry: Any, setting: str, where: str) -> Milestone:
    shape = '{"deadline": "YYYY-MM-DD", "min_rate": 0.9}'
    if not isinstance(entry, dict):
        raise SettingsError(f"{setting}: {where} must be an object {shape}")
    keys = set(entry)
    if keys != {"deadline", "min_rate"}:
        extra, missing = sorted(keys - {"deadline", "min_rate"}), sorted({"deadline", "min_rate"} - keys)
        what = f"unknown key {extra[0]!r}" if extra else f"missing {missing[0]!r}"
        raise SettingsError(f"{setting}: {where}: {what}; expected {shape}")
    deadline, rate = entry["deadline"], entry["min_rate"]
    try:
        if not isinstance(deadline, str) or len(deadline) != 10:
            raise ValueError
        day = date.fromisoformat(deadline)
    except ValueError:
        raise SettingsError(f"{setting}: {where}.deadline: {_shown(deadline)} is not a date YYYY-MM-DD") from None
    if isinstance(rate, bool) or not isinstance(rate, int | Decimal) or not 0 < rate <= 1:
        raise SettingsError(f"{setting}: {where}.min_rate: {_shown(rate)} is not a number above 0 and at most 1")
    return Milestone(day, Decimal(rate))


def _shown(value: Any) -> str:
    """A configuration value as it was written in the JSON (rates are parsed as Decimal)."""
    return str(value) if isinstance(value, Decimal) else json.dumps(value, ensure_ascii=False)


def dump(targets: Targets) -> dict[str, Any]:
    """The configuration in the file format (floats for rates), for documentation and tests."""

    def one(ms: Sequence[Milestone]) -> list[dict[str, Any]]:
        return [{"deadline": m.deadline.isoformat(), "min_rate": float(m.min_rate)} for m in ms]

    return {"default": one(targets.default), "overrides": {k: one(v) for k, v in targets.overrides.items()}}


# -- Status ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Count:
    """A region's villages_total and villages_reached, now or in a snapshot."""

    total: int
    reached: int


@dataclass(frozen=True, slots=True)
class Pace:
    """Villages newly reached per day, ``villages / days``, measured since a snapshot."""

    since: date
    villages: int
    days: int

    @property
    def per_day(self) -> float:
        return round(self.villages / self.days, 3)


class MilestoneStatus(TypedDict):
    deadline: str
    min_rate: float
    status: str
    basis: str
    villages_required: int
    gap: int
    days_left: int
    needed_villages_per_day: float | None
    needed_rate_per_day: float | None
    at_deadline: dict[str, Any] | None


def baseline_date(snapshot_dates: Sequence[date], today: date, window_days: int = PACE_WINDOW_DAYS) -> date | None:
    """The snapshot the recent pace is measured from.

    The earliest snapshot dated within the last ``window_days`` days before today; when there is none
    in that window, the latest older one (the pace since then); None without any snapshot before today.
    """
    start = today - timedelta(days=window_days)
    recent = [d for d in snapshot_dates if start <= d < today]
    if recent:
        return min(recent)
    older = [d for d in snapshot_dates if d < start]
    return max(older) if older else None


def pace_since(baseline: date, then: Count, now: Count, today: date) -> Pace:
    return Pace(since=baseline, villages=now.reached - then.reached, days=max(1, (today - baseline).days))


def status(m: Milestone, now: Count, today: date, *, at_deadline: Count | None, pace: Pace | None) -> MilestoneStatus:
    """One milestone's status for a region with figures ``now`` on day ``today`` (China Standard Time).

    ``at_deadline`` is the history snapshot of the deadline day, if any; ``pace`` the recent pace,
    if history allows measuring it. The gap and needed pace always use the current figures.
    """
    required = m.villages_required(now.total)
    gap = max(0, required - now.reached)
    passed = today > m.deadline
    days_left = 0 if passed else (m.deadline - today).days + 1
    snapshot = None
    if passed:
        if at_deadline is not None:
            state = MET if at_deadline.reached >= m.villages_required(at_deadline.total) else MISSED
            basis = BASIS_DEADLINE_SNAPSHOT
            snapshot = {
                "date": m.deadline.isoformat(),
                "villages_total": at_deadline.total,
                "villages_reached": at_deadline.reached,
            }
        else:
            state, basis = (MET if gap == 0 else MISSED), BASIS_CURRENT
    elif gap == 0:
        state, basis = MET, BASIS_CURRENT
    elif pace is None:
        state, basis = AT_RISK, BASIS_NO_PACE
    else:
        # pace.villages / pace.days >= gap / days_left, compared without rounding.
        state = ON_TRACK if pace.villages * days_left >= gap * pace.days else AT_RISK
        basis = BASIS_PACE
    per_day = None if passed else round(gap / days_left, 3)
    return {
        "deadline": m.deadline.isoformat(),
        "min_rate": float(m.min_rate),
        "status": state,
        "basis": basis,
        "villages_required": required,
        "gap": gap,
        "days_left": days_left,
        "needed_villages_per_day": per_day,
        "needed_rate_per_day": None if passed or now.total == 0 else round(gap / days_left / now.total, 6),
        "at_deadline": snapshot,
    }


DEFINITION: Final = {
    "met": "coverage_rate >= min_rate, i.e. villages_reached >= villages_required (reached villages count, "
    "lapsed ones too). For a passed deadline the history snapshot of the deadline day decides (basis "
    f"'{BASIS_DEADLINE_SNAPSHOT}', shown in at_deadline); without one, the current figures do (basis "
    f"'{BASIS_CURRENT}'). A region without villages meets every milestone.",
    "missed": "the deadline has passed and the milestone was not met, decided as for 'met'.",
    "on track": "deadline today or later, not met yet, and the recent pace (villages newly reached per day) "
    "is at least needed_villages_per_day.",
    "at risk": "deadline today or later, not met yet, and the recent pace is below needed_villages_per_day, "
    f"or unknown (basis '{BASIS_NO_PACE}': no history snapshot before today in this scope; snapshots exist "
    "for the any-carrier, all-villages scope only).",
    "villages_required": "ceil(min_rate * villages_total).",
    "gap": "villages still to reach for the milestone now: max(0, villages_required - villages_reached).",
    "days_left": "days from today to the deadline, both counted (1 on the deadline day; days are China "
    "Standard Time dates; a deadline runs to the end of its day); 0 once it has passed.",
    "needed_villages_per_day": "gap / days_left; null once the deadline has passed.",
    "needed_rate_per_day": "needed_villages_per_day / villages_total, in coverage_rate units "
    "(0.001 = 0.1 percentage point a day); null once passed or without villages.",
    "pace": f"(villages_reached now - villages_reached in the baseline snapshot) / days since it. The "
    f"baseline is the earliest snapshot of the last {PACE_WINDOW_DAYS} days before today, else the latest "
    "older one; null without history.",
    "targets_from": "'default', or the division-code prefix of the LASTMILE_COVERAGE_TARGETS override in force.",
}


# -- Laggards -------------------------------------------------------------------------------------


class LaggardRow(TypedDict):
    rank: int
    code: str
    name: str | None
    level: str
    villages_total: int
    villages_reached: int
    coverage_rate: float | None
    gap: int
    villages_lapsed: int
    villages_active: int
    villages_with_station: int


LAGGARDS_DEFINITION: Final = {
    "order": "coverage_rate ascending; ties by gap descending (more villages still to reach first), then by code.",
    "gap": "villages not reached yet: villages_total - villages_reached (the gap to full coverage, the "
    "programme's final goal, the same for every unit whatever its milestones).",
    "left_out": "units with no administrative villages (in the scope) have no rate and are not ranked; "
    "units_without_villages counts them.",
}


def rank_laggards(units: Sequence[Mapping[str, Any]], limit: int) -> tuple[list[LaggardRow], int]:
    """(the ``limit`` lowest-coverage units ranked as :data:`LAGGARDS_DEFINITION` says, units left out).

    ``units`` are figures as :meth:`coverage_service.readmodel.queries.Reader.figures` gives them.
    """
    ranked = [u for u in units if u["villages_total"] > 0]
    ranked.sort(
        key=lambda u: (
            Fraction(u["villages_reached"], u["villages_total"]),
            u["villages_reached"] - u["villages_total"],
            u["code"],
        )
    )
    rows: list[LaggardRow] = [
        {
            "rank": i,
            "code": u["code"],
            "name": u["name"],
            "level": u["level"],
            "villages_total": u["villages_total"],
            "villages_reached": u["villages_reached"],
            "coverage_rate": u["coverage_rate"],
            "gap": u["villages_total"] - u["villages_reached"],
            "villages_lapsed": u["villages_lapsed"],
            "villages_active": u["villages_active"],
            "villages_with_station": u["villages_with_station"],
        }
        for i, u in enumerate(ranked[:limit], start=1)
    ]
    return rows, len(units) - len(ranked)
