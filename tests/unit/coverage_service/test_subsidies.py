"""Subsidy rules: the bundled 驿城区 2021 rules, each rule passing and failing, and configuration errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coverage_service.reports import subsidies
from coverage_service.reports.subsidies import Unit
from lastmile.settings import SettingsError

BUNDLED = Path(subsidies.__file__).with_name("subsidy_rules.json")


def default_rules() -> subsidies.Rules:
    return subsidies.parse(BUNDLED.read_text(encoding="utf-8"), "bundled")


def test_the_bundled_rules_are_the_yicheng_2021_rules() -> None:
    rules = default_rules()
    assert [(r.id, r.level, r.amount_yuan, r.describe()) for r in rules.rules] == [
        (
            "county-co-distribution-centre",
            "county",
            300_000,
            {"min_parcels_per_year": 20_000_000, "min_coverage_rate": 1.0},
        ),
        ("township-hub", "township", 20_000, {"min_parcels_per_year": 200_000, "all_villages_have_station": True}),
        ("village-station", "village", 1_000, {"has_station": True}),
    ]
    assert "驿城区" in rules.description


def one(rule_id: str, unit: Unit) -> dict[str, Any]:
    results = {r["id"]: r for r in subsidies.evaluate(default_rules(), [unit], 2021)}
    [result] = results[rule_id]["units"]
    return dict(result)


def test_county_centre_needs_the_volume_and_full_coverage() -> None:
    ok = one("county-co-distribution-centre", Unit("411702", "驿城区", "county", 20_000_000, 200, 200, 150))
    assert (ok["eligible"], ok["amount_yuan"]) == (True, 300_000)
    assert ok["reason"] == (
        "eligible: parcels in 2021: 20,000,000 >= 20,000,000; coverage 200 of 200 villages reached = 1 >= 1"
    )
    low = one("county-co-distribution-centre", Unit("411702", "驿城区", "county", 19_999_999, 200, 199, 150))
    assert (low["eligible"], low["amount_yuan"]) == (False, 0)
    assert low["reason"] == (
        "parcels in 2021: 19,999,999 < 20,000,000; coverage 199 of 200 villages reached = 0.995 < 1"
    )
    assert [c["holds"] for c in low["checks"]] == [False, False]
    assert low["checks"][1] == {
        "condition": "min_coverage_rate",
        "required": 1.0,
        "actual": 0.995,
        "holds": False,
        "detail": "coverage 199 of 200 villages reached = 0.995 < 1",
    }


def test_township_hub_needs_the_volume_and_a_station_in_every_village() -> None:
    ok = one("township-hub", Unit("411702100", "古城乡", "township", 250_000, 12, 12, 12))
    assert ok["eligible"] and ok["amount_yuan"] == 20_000
    short = one("township-hub", Unit("411702100", "古城乡", "township", 250_000, 12, 12, 11))
    assert not short["eligible"]
    assert short["reason"] == "a station in 11 of 12 villages"
    few = one("township-hub", Unit("411702100", "古城乡", "township", 199_999, 12, 12, 12))
    assert few["reason"] == "parcels in 2021: 199,999 < 200,000"
    empty = one("township-hub", Unit("411702001", "街道", "township", 300_000, 0, 0, 0))
    assert (empty["eligible"], empty["reason"]) == (False, "no administrative villages")


def test_village_station_needs_a_station() -> None:
    ok = one("village-station", Unit("411702100201", "甲村委会", "village", 0, 1, 1, 1, stations=2))
    assert (ok["eligible"], ok["amount_yuan"], ok["reason"]) == (True, 1_000, "eligible: 2 stations seen")
    none = one("village-station", Unit("411702100202", "乙村委会", "village", 40, 1, 1, 0, stations=0))
    assert (none["eligible"], none["amount_yuan"], none["reason"]) == (False, 0, "no station seen")


def test_totals_per_rule() -> None:
    units = [
        Unit("411702", "驿城区", "county", 10, 3, 2, 2),
        Unit("411702100", "古城乡", "township", 10, 3, 2, 2),
        *(Unit(f"41170210020{i}", None, "village", 0, 1, 1, 1, stations=1) for i in (1, 2)),
        Unit("411702100203", None, "village", 0, 1, 0, 0, stations=0),
    ]
    results = subsidies.evaluate(default_rules(), units, 2021)
    assert [(r["id"], r["units_evaluated"], r["units_eligible"], r["total_yuan"]) for r in results] == [
        ("county-co-distribution-centre", 1, 0, 0),
        ("township-hub", 1, 0, 0),
        ("village-station", 3, 2, 2_000),
    ]


def test_a_rule_without_conditions_pays_every_unit() -> None:
    rules = subsidies.parse(
        json.dumps(
            {
                "rules": [
                    {"id": "all", "name": "every township", "level": "township", "amount_yuan": 5, "conditions": {}},
                ]
            }
        ),
        "x",
    )
    [result] = subsidies.evaluate(rules, [Unit("411702100", None, "township", 0, 0, 0, 0)], 2021)
    assert (result["total_yuan"], result["units"][0]["reason"]) == (5, "eligible: no conditions")


def rule(**changes: Any) -> str:
    base: dict[str, Any] = {
        "id": "r1",
        "name": "hub",
        "level": "township",
        "amount_yuan": 100,
        "conditions": {"min_parcels_per_year": 10},
    }
    base.update(changes)
    return json.dumps({"rules": [{k: v for k, v in base.items() if v is not None}]})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[]", 'expected an object {"rules": [...]}'),
        ('{"rules": [], "x": 1}', "unknown key 'x'"),
        (rule(id="a b"), 'rules[0].id: "a b" is not 1-64 letters'),
        (rule(name=None), "rules[0]: missing 'name'"),
        (rule(level="city"), 'rules[0] (r1).level: "city" is not one of county, township, village'),
        (rule(amount_yuan=-1), "rules[0] (r1).amount_yuan: -1 is not a whole number"),
        (rule(amount_yuan=1.5), "rules[0] (r1).amount_yuan: 1.5 is not a whole number"),
        (rule(conditions=[]), "rules[0] (r1).conditions: must be an object"),
        (rule(conditions={"min_villages": 3}), "conditions.min_villages: unknown condition"),
        (rule(conditions={"has_station": True}), "conditions.has_station: not for level 'township'"),
        (rule(level="village", conditions={"all_villages_have_station": True}), "not for level 'village'"),
        (rule(conditions={"all_villages_have_station": False}), "all_villages_have_station: must be true"),
        (rule(conditions={"min_coverage_rate": 1.2}), "min_coverage_rate: 1.2 is not a number from 0 to 1"),
        (rule(conditions={"min_parcels_per_year": "many"}), 'min_parcels_per_year: "many" is not a whole number'),
        (
            json.dumps({"rules": [json.loads(rule())["rules"][0]] * 2}),
            "rule id 'r1' is used more than once",
        ),
    ],
)
def test_configuration_errors_name_the_file_and_the_rule(text: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        subsidies.parse(text, "SUBSIDY_RULES_FILE (rules.json)")
    assert message in str(raised.value)
    assert str(raised.value).startswith("SUBSIDY_RULES_FILE (rules.json): ")
