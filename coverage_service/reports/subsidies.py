"""Subsidy rules and who in a county meets them. Pure; no I/O.

Local bureaus pay one-off subsidies for last-mile infrastructure when volume and coverage thresholds are reached; the
thresholds differ between places and years, so they are data, not code. The bundled default (``subsidy_rules.json``
beside this module) is 驿城区's 2021 rules; the file format is on docs/reports.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from typing_extensions import TypedDict

from lastmile.settings import SettingsError

COUNTY: Final = "county"
TOWNSHIP: Final = "township"
VILLAGE: Final = "village"
LEVELS: Final = (COUNTY, TOWNSHIP, VILLAGE)

MIN_PARCELS: Final = "min_parcels_per_year"
MIN_COVERAGE: Final = "min_coverage_rate"
ALL_STATIONS: Final = "all_villages_have_station"
HAS_STATION: Final = "has_station"
# Each condition and the levels it may be used at.
CONDITIONS: Final = {
    MIN_PARCELS: LEVELS,
    MIN_COVERAGE: (COUNTY, TOWNSHIP),
    ALL_STATIONS: (COUNTY, TOWNSHIP),
    HAS_STATION: (VILLAGE,),
}
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RULE_KEYS: Final = {"id", "name", "level", "amount_yuan", "conditions"}


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    name: str
    level: str
    amount_yuan: int
    conditions: tuple[tuple[str, Any], ...]  # in file order; values: int, Decimal or True

    def describe(self) -> dict[str, Any]:
        return {k: float(v) if isinstance(v, Decimal) else v for k, v in self.conditions}


@dataclass(frozen=True, slots=True)
class Rules:
    rules: tuple[Rule, ...]
    description: str = ""


def parse(text: str, source: str) -> Rules:
    """The rules in ``text``, or a :class:`SettingsError` naming ``source`` and the faulty rule."""
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{source}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise SettingsError(f'{source}: expected an object {{"rules": [...]}}')
    unknown = sorted(set(data) - {"rules", "description"})
    if unknown:
        raise SettingsError(f"{source}: unknown key {unknown[0]!r}; expected 'rules' and 'description'")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SettingsError(f"{source}: description must be a string")
    rules = [_rule(r, f"{source}: rules[{i}]") for i, r in enumerate(data["rules"])]
    ids = [r.id for r in rules]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise SettingsError(f"{source}: rule id {repeated[0]!r} is used more than once")
    return Rules(tuple(rules), description)


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: must be an object with {', '.join(sorted(_RULE_KEYS))}")
    if set(raw) != _RULE_KEYS:
        extra, missing = sorted(set(raw) - _RULE_KEYS), sorted(_RULE_KEYS - set(raw))
        raise SettingsError(f"{where}: " + (f"unknown key {extra[0]!r}" if extra else f"missing {missing[0]!r}"))
    rule_id, name, level, amount, conditions = (raw[k] for k in ("id", "name", "level", "amount_yuan", "conditions"))
    if not isinstance(rule_id, str) or not _ID_RE.fullmatch(rule_id):
        raise SettingsError(f"{where}.id: {_shown(rule_id)} is not 1-64 letters, digits, '-' or '_'")
    where = f"{where} ({rule_id})"
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(f"{where}.name: must be a non-empty string")
    if level not in LEVELS:
        raise SettingsError(f"{where}.level: {_shown(level)} is not one of {', '.join(LEVELS)}")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise SettingsError(f"{where}.amount_yuan: {_shown(amount)} is not a whole number of yuan >= 0")
    if not isinstance(conditions, dict):
        raise SettingsError(f"{where}.conditions: must be an object (empty: every unit is eligible)")
    return Rule(rule_id, name, level, amount, tuple(_condition(k, v, level, where) for k, v in conditions.items()))


def _condition(name: str, value: Any, level: str, where: str) -> tuple[str, Any]:
    at = f"{where}.conditions.{name}"
    if name not in CONDITIONS:
        raise SettingsError(f"{at}: unknown condition; expected one of {', '.join(CONDITIONS)}")
    if level not in CONDITIONS[name]:
        raise SettingsError(f"{at}: not for level {level!r}; it applies to {', '.join(CONDITIONS[name])}")
    if name == MIN_PARCELS and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise SettingsError(f"{at}: {_shown(value)} is not a whole number >= 0")
    if name == MIN_COVERAGE and (
        isinstance(value, bool) or not isinstance(value, int | Decimal) or not 0 <= value <= 1
    ):
        raise SettingsError(f"{at}: {_shown(value)} is not a number from 0 to 1")
    if name in (ALL_STATIONS, HAS_STATION) and value is not True:
        raise SettingsError(f"{at}: must be true (leave the condition out to not require it)")
    return name, Decimal(value) if name == MIN_COVERAGE else value


def _shown(value: Any) -> str:
    """A configuration value as it was written in the JSON (rates are parsed as Decimal)."""
    return str(value) if isinstance(value, Decimal) else json.dumps(value, ensure_ascii=False)


# -- Evaluation -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unit:
    """A county, township or administrative village with the figures the conditions read."""

    code: str
    name: str | None
    level: str
    parcels: int  # in the report year
    villages_total: int  # a village: 1
    villages_reached: int
    villages_with_station: int
    stations: int | None = None  # distinct station_ids, for a village


class Check(TypedDict):
    condition: str
    required: Any
    actual: Any
    holds: bool
    detail: str


class UnitResult(TypedDict):
    code: str
    name: str | None
    eligible: bool
    amount_yuan: int
    reason: str
    checks: list[Check]


class RuleResult(TypedDict):
    id: str
    name: str
    level: str
    amount_yuan: int
    conditions: dict[str, Any]
    units_evaluated: int
    units_eligible: int
    total_yuan: int
    units: list[UnitResult]


def evaluate(rules: Rules, units: Sequence[Unit], year: int) -> list[RuleResult]:
    """Each rule over the units of its level: who is eligible, why (not), and what it adds up to."""
    out: list[RuleResult] = []
    for rule in rules.rules:
        results = [_unit(rule, u, year) for u in units if u.level == rule.level]
        eligible = sum(1 for r in results if r["eligible"])
        out.append(
            {
                "id": rule.id,
                "name": rule.name,
                "level": rule.level,
                "amount_yuan": rule.amount_yuan,
                "conditions": rule.describe(),
                "units_evaluated": len(results),
                "units_eligible": eligible,
                "total_yuan": eligible * rule.amount_yuan,
                "units": results,
            }
        )
    return out


def _unit(rule: Rule, u: Unit, year: int) -> UnitResult:
    checks = [check(name, value, u, year) for name, value in rule.conditions]
    failed = [c["detail"] for c in checks if not c["holds"]]
    eligible = not failed
    reason = "; ".join(failed) if failed else "eligible: " + ("; ".join(c["detail"] for c in checks) or "no conditions")
    return {
        "code": u.code,
        "name": u.name,
        "eligible": eligible,
        "amount_yuan": rule.amount_yuan if eligible else 0,
        "reason": reason,
        "checks": checks,
    }


def check(name: str, value: Any, u: Unit, year: int) -> Check:
    """One condition against one unit, with the figures that decided it."""
    if name == MIN_PARCELS:
        holds = u.parcels >= value
        detail = f"parcels in {year}: {u.parcels:,} {'>=' if holds else '<'} {value:,}"
        return {"condition": name, "required": value, "actual": u.parcels, "holds": holds, "detail": detail}
    if name == MIN_COVERAGE:
        rate = None if u.villages_total == 0 else round(u.villages_reached / u.villages_total, 6)
        holds = u.villages_total > 0 and u.villages_reached >= math.ceil(value * u.villages_total)
        figures = f"{u.villages_reached} of {u.villages_total} villages reached"
        detail = (
            "no administrative villages"
            if rate is None
            else (f"coverage {figures} = {rate:g} {'>=' if holds else '<'} {float(value):g}")
        )
        return {"condition": name, "required": float(value), "actual": rate, "holds": holds, "detail": detail}
    if name == ALL_STATIONS:
        holds = u.villages_total > 0 and u.villages_with_station == u.villages_total
        detail = (
            "no administrative villages"
            if u.villages_total == 0
            else (f"a station in {u.villages_with_station} of {u.villages_total} villages")
        )
        actual = f"{u.villages_with_station}/{u.villages_total}"
        return {"condition": name, "required": True, "actual": actual, "holds": holds, "detail": detail}
    if name == HAS_STATION:
        count = u.stations if u.stations is not None else u.villages_with_station
        holds = count > 0
        detail = f"{count} station{'s' if count != 1 else ''} seen" if holds else "no station seen"
        return {"condition": name, "required": True, "actual": count, "holds": holds, "detail": detail}
    raise ValueError(f"unknown condition {name!r}")  # parse() admits none
