"""Targets, laggards and the subsidy report over a real redis-server, the read model written by the real code.

The registry is reports_world's county; every expected figure is counted by hand from it and the events
each test applies.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from coverage_service.readmodel import history
from lastmile.settings import Settings, SettingsError
from tests.support.regulator_world import app_for, serving
from tests.support.reports_world import (
    CHENGGUAN,
    GUANSHAN,
    LIANGJIA,
    LUJIA,
    PINGDING,
    SUNJIA,
    XIUSHUI,
    YUXIAN,
    County,
    event,
    village,
)

pytestmark = pytest.mark.integration

CST = timezone(timedelta(hours=8))
NOW = datetime.now(UTC)
TODAY = NOW.astimezone(CST).date()
PROBLEM = "application/problem+json"


def csv_rows(text: str) -> list[list[str]]:
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


# -- targets ---------------------------------------------------------------------------------------


async def test_targets_default_milestones_missed(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    county = County(redis, settings)
    await county.load(tmp_path / "reg")
    await county.apply(*(event(village(XIUSHUI, i), NOW - timedelta(days=1)) for i in range(1, 7)))
    async with serving(app_for(settings)) as client:
        r = await client.get(f"/v1/coverage/{XIUSHUI}/targets")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["code"], body["name"], body["level"]) == (XIUSHUI, "秀水镇", "township")
        assert (body["villages_total"], body["villages_reached"], body["coverage_rate"]) == (10, 6, 0.6)
        assert body["as_of"] is not None and body["targets_from"] == "default"
        assert body["today"] == TODAY.isoformat()
        assert body["pace"] == {"villages_per_day": None, "since": None, "days": None, "villages": None}
        got = [
            (
                m["deadline"],
                m["min_rate"],
                m["status"],
                m["basis"],
                m["villages_required"],
                m["gap"],
                m["days_left"],
                m["needed_villages_per_day"],
            )
            for m in body["milestones"]
        ]
        assert got == [
            ("2021-12-31", 0.9, "missed", "current_figures", 9, 3, 0, None),
            ("2022-12-31", 1.0, "missed", "current_figures", 10, 4, 0, None),
        ]
        for word in ("met", "missed", "on track", "at risk", "gap", "days_left", "reached", "coverage_rate"):
            assert word in body["definition"]

        r = await client.get(f"/v1/coverage/{XIUSHUI}/targets", params={"format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        header, *rows = csv_rows(r.text)
        assert header[:4] == ["code", "deadline", "min_rate", "status"]
        assert [row[:4] for row in rows] == [
            [XIUSHUI, "2021-12-31", "0.9", "missed"],
            [XIUSHUI, "2022-12-31", "1.0", "missed"],
        ]

        national = (await client.get("/v1/coverage/CN/targets")).json()
        assert (national["code"], national["villages_total"], national["villages_reached"]) == ("CN", 21, 6)
        assert [m["gap"] for m in national["milestones"]] == [13, 15]  # ceil(18.9) - 6; 21 - 6

        for path, status in [
            ("/v1/coverage/1499/targets", 404),
            ("/v1/coverage/14032/targets", 400),
            ("/v1/coverage/140322100201/targets", 400),
        ]:
            r = await client.get(path)
            assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM), path


async def test_targets_use_history_for_deadlines_and_pace_and_overrides_by_prefix(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    county = County(redis, settings)
    await county.load(tmp_path / "reg")
    p, lapse = settings.redis_key_prefix, settings.lapse_window_days
    await county.apply(*(event(village(XIUSHUI, i), NOW - timedelta(days=1)) for i in range(1, 4)))
    now_ms = int(NOW.timestamp() * 1000)
    # 3 of 10 reached when the 2022 deadline's snapshot and the one of ten days ago were taken.
    await history.take(redis, p, date(2022, 12, 31), now_ms=now_ms, lapse_days=lapse)
    await history.take(redis, p, TODAY - timedelta(days=10), now_ms=now_ms, lapse_days=lapse)
    await county.apply(*(event(village(XIUSHUI, i), NOW - timedelta(hours=1)) for i in range(4, 7)))

    def day(n: int) -> str:
        return (TODAY + timedelta(days=n)).isoformat()

    config = {
        "overrides": {
            XIUSHUI: [
                {"deadline": "2021-12-31", "min_rate": 0.9},
                {"deadline": "2022-12-31", "min_rate": 0.5},
                {"deadline": day(9), "min_rate": 0.8},
                {"deadline": day(4), "min_rate": 1},
                {"deadline": day(20), "min_rate": 0.6},
            ]
        }
    }
    async with serving(app_for(settings, coverage_targets=json.dumps(config))) as client:
        body = (await client.get(f"/v1/coverage/{XIUSHUI}/targets")).json()
        assert (body["villages_reached"], body["targets_from"]) == (6, XIUSHUI)
        # Pace: 6 reached now, 3 ten days ago.
        since = (TODAY - timedelta(days=10)).isoformat()
        assert body["pace"] == {"villages_per_day": 0.3, "since": since, "days": 10, "villages": 3}
        got = [
            (
                m["deadline"],
                m["status"],
                m["basis"],
                m["gap"],
                m["days_left"],
                m["needed_villages_per_day"],
                m["needed_rate_per_day"],
            )
            for m in body["milestones"]
        ]
        assert got == [
            ("2021-12-31", "missed", "current_figures", 3, 0, None, None),  # no snapshot that day: 6 < 9 now
            ("2022-12-31", "missed", "deadline_snapshot", 0, 0, None, None),  # 3 < 5 on the day, 6 now
            (day(4), "at risk", "recent_pace", 4, 5, 0.8, 0.08),  # needs 0.8 a day, pace 0.3
            (day(9), "on track", "recent_pace", 2, 10, 0.2, 0.02),  # needs 0.2 a day
            (day(20), "met", "current_figures", 0, 21, 0.0, 0.0),
        ]
        assert body["milestones"][1]["at_deadline"] == {
            "date": "2022-12-31",
            "villages_total": 10,
            "villages_reached": 3,
        }

        # In a carrier's scope there is no history: no pace, no deadline snapshot.
        body = (await client.get(f"/v1/coverage/{XIUSHUI}/targets", params={"carrier": "yto"})).json()
        assert (body["villages_reached"], body["pace"]["villages_per_day"]) == (0, None)
        assert [(m["status"], m["basis"], m["gap"]) for m in body["milestones"]] == [
            ("missed", "current_figures", 9),
            ("missed", "current_figures", 5),
            ("at risk", "no_history", 10),
            ("at risk", "no_history", 8),
            ("at risk", "no_history", 6),
        ]
        assert body["definition"]["scope"]["carrier"] == "yto"

        # The override is for 秀水镇 and below only: its county has the default milestones.
        body = (await client.get(f"/v1/coverage/{YUXIAN}/targets")).json()
        assert body["targets_from"] == "default" and len(body["milestones"]) == 2


async def test_bad_milestone_configuration_stops_the_app(settings: Settings) -> None:
    app = app_for(settings, coverage_targets='[{"deadline": "2021-12-31", "min_rate": 9}]')
    with pytest.raises(SettingsError, match=r"COVERAGE_TARGETS: milestones\[0\].min_rate: 9 is not a number"):
        async with serving(app):
            pass
    app = app_for(settings, coverage_targets="[]", coverage_targets_file="/nonexistent.json")
    with pytest.raises(SettingsError, match="both set"):
        async with serving(app):
            pass


# -- laggards --------------------------------------------------------------------------------------


async def test_laggards_rank_units_by_rate_with_ties_broken_by_gap(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    county = County(redis, settings)
    await county.load(tmp_path / "reg")
    recent, old = NOW - timedelta(days=1), NOW - timedelta(days=40)
    await county.apply(
        *(event(village(XIUSHUI, i), recent) for i in range(1, 7)),  # 6 of 10
        event(village(SUNJIA, 1), recent, carrier="yto"),  # 1 of 2
        event(village(LUJIA, 1), recent),  # 2 of 4, one of them lapsed
        event(village(LUJIA, 2), old),
        event(CHENGGUAN + "001", recent),  # a community: counts nowhere
    )
    async with serving(app_for(settings)) as client:
        r = await client.get(f"/v1/laggards/{YUXIAN}", params={"level": "township"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["code"], body["name"], body["unit_level"], body["limit"]) == (YUXIAN, "盂县", "township", 50)
        assert (body["units_ranked"], body["units_without_villages"]) == (4, 1)  # 城关街道 has no villages
        rows = [
            (
                r["rank"],
                r["code"],
                r["name"],
                r["level"],
                r["villages_total"],
                r["villages_reached"],
                r["coverage_rate"],
                r["gap"],
                r["villages_lapsed"],
                r["villages_active"],
                r["villages_with_station"],
            )
            for r in body["laggards"]
        ]
        assert rows == [
            (1, LIANGJIA, "梁家寨乡", "township", 3, 0, 0.0, 3, 0, 0, 0),
            (2, LUJIA, "路家村镇", "township", 4, 2, 0.5, 2, 1, 1, 0),  # ties with 孙家庄镇 at 0.5: larger gap first
            (3, SUNJIA, "孙家庄镇", "township", 2, 1, 0.5, 1, 0, 1, 0),
            (4, XIUSHUI, "秀水镇", "township", 10, 6, 0.6, 4, 0, 6, 0),
        ]

        top = (await client.get(f"/v1/laggards/{YUXIAN}", params={"limit": 2})).json()  # level defaults to township
        assert [r["code"] for r in top["laggards"]] == [LIANGJIA, LUJIA] and top["units_ranked"] == 4

        r = await client.get(f"/v1/laggards/{YUXIAN}", params={"format": "csv"})
        header, *lines = csv_rows(r.text)
        assert header == [
            "rank",
            "code",
            "name",
            "level",
            "villages_total",
            "villages_reached",
            "coverage_rate",
            "gap",
            "villages_lapsed",
            "villages_active",
            "villages_with_station",
        ]
        assert lines[1] == ["2", LUJIA, "路家村镇", "township", "4", "2", "0.5", "2", "1", "1", "0"]

        cities = (await client.get("/v1/laggards/1403", params={"level": "county"})).json()
        assert [
            (r["code"], r["villages_total"], r["villages_reached"], r["coverage_rate"], r["gap"])
            for r in cities["laggards"]
        ] == [(PINGDING, 2, 0, 0.0, 2), (YUXIAN, 19, 9, 0.473684, 10)]

        nation = (await client.get("/v1/laggards/CN")).json()
        assert [r["code"] for r in nation["laggards"]] == [LIANGJIA, GUANSHAN, LUJIA, SUNJIA, XIUSHUI]
        provinces = (await client.get("/v1/laggards/CN", params={"level": "province"})).json()
        assert [(r["code"], r["villages_reached"], r["coverage_rate"]) for r in provinces["laggards"]] == [
            ("14", 9, 0.428571)
        ]

        # A carrier's figures: only yto's village counts; every other township ties at 0, larger gaps first.
        yto = (await client.get(f"/v1/laggards/{YUXIAN}", params={"carrier": "yto"})).json()
        assert [(r["code"], r["villages_reached"], r["gap"]) for r in yto["laggards"]] == [
            (XIUSHUI, 0, 10),
            (LUJIA, 0, 4),
            (LIANGJIA, 0, 3),
            (SUNJIA, 1, 1),
        ]

        for path, params, status in [
            (f"/v1/laggards/{YUXIAN}", {"level": "city"}, 400),  # not below a county
            (f"/v1/laggards/{XIUSHUI}", {}, 400),  # nothing ranks below a township
            (f"/v1/laggards/{YUXIAN}", {"level": "village"}, 400),
            (f"/v1/laggards/{YUXIAN}", {"limit": 0}, 400),
            ("/v1/laggards/1499", {"level": "county"}, 404),
            ("/v1/laggards/abc", {}, 400),
        ]:
            r = await client.get(path, params=params)
            assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM), (path, params, r.text)
        r = await client.get(f"/v1/laggards/{YUXIAN}", params={"level": "city"})
        assert "level=city is not below 140322 (a county); choose one of: township" in r.json()["detail"]


# -- subsidies -------------------------------------------------------------------------------------


async def subsidy_county(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    county = County(redis, settings)
    await county.load(tmp_path / "reg")
    await county.apply(
        event(village(XIUSHUI, 1), "2024-03-01T10:00:00+08:00", station="S1"),
        event(village(XIUSHUI, 1), "2024-06-01T09:00:00+08:00", event_type="picked_up", station="S2"),
        event(village(XIUSHUI, 2), "2024-12-31T23:30:00+08:00", event_type="collected", station="S3"),
        event(village(XIUSHUI, 2), "2024-12-31T16:30:00Z"),  # 2025-01-01 00:30 in China: a 2025 parcel
        event(XIUSHUI + "001", "2024-05-01T12:00:00+08:00", station="S5"),  # a community's parcel and station
        event(village(SUNJIA, 1), "2024-05-01T12:00:00+08:00", event_type="arrived_at_station", station="S4"),
        event(village(SUNJIA, 2), "2024-05-02T12:00:00+08:00", station="S6"),
        event(village(LUJIA, 1), "2023-05-01T12:00:00+08:00"),
        event(village(LUJIA, 2), "2024-07-01T12:00:00+08:00", event_type="out_for_delivery"),  # not a parcel count
    )
    # Parcels in 2024: 秀水镇 4 (2 + 1 + the community's 1), 孙家庄镇 1, others 0; the county 5.
    # Villages with a station: 秀水镇 2 of 10, 孙家庄镇 2 of 2; the county 4 of 19. Reached: 5 of 19.


async def test_subsidy_report_with_the_default_rules(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    await subsidy_county(redis, settings, tmp_path)
    async with serving(app_for(settings)) as client:
        r = await client.get(f"/v1/reports/{YUXIAN}/subsidies", params={"year": 2024})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["year"] == 2024 and body["rules_source"] == "bundled default rules"
        assert body["county"] == {
            "code": YUXIAN,
            "name": "盂县",
            "parcels": 5,
            "villages_total": 19,
            "villages_reached": 5,
            "coverage_rate": 0.263158,
            "villages_with_station": 4,
        }
        assert [
            (t["code"], t["parcels"], t["villages_total"], t["villages_with_station"], t["villages_reached"])
            for t in body["townships"]
        ] == [
            (XIUSHUI, 4, 10, 2, 2),
            (SUNJIA, 1, 2, 2, 2),
            (LUJIA, 0, 4, 0, 1),
            (CHENGGUAN, 0, 0, 0, 0),
            (LIANGJIA, 0, 3, 0, 0),
        ]
        rules = {r["id"]: r for r in body["rules"]}
        centre = rules["county-co-distribution-centre"]
        assert (centre["units_evaluated"], centre["units_eligible"], centre["total_yuan"]) == (1, 0, 0)
        assert centre["units"][0]["reason"] == (
            "parcels in 2024: 5 < 20,000,000; coverage 5 of 19 villages reached = 0.263158 < 1"
        )
        hubs = {u["code"]: u for u in rules["township-hub"]["units"]}
        assert rules["township-hub"]["total_yuan"] == 0
        assert hubs[SUNJIA]["reason"] == "parcels in 2024: 1 < 200,000"  # a station in both its villages
        assert hubs[XIUSHUI]["reason"] == "parcels in 2024: 4 < 200,000; a station in 2 of 10 villages"
        assert hubs[CHENGGUAN]["reason"] == "parcels in 2024: 0 < 200,000; no administrative villages"
        stations = rules["village-station"]
        assert (stations["units_evaluated"], stations["units_eligible"], stations["total_yuan"]) == (19, 4, 4000)
        paid = {u["code"]: u["reason"] for u in stations["units"] if u["eligible"]}
        assert paid == {
            village(XIUSHUI, 1): "eligible: 2 stations seen",
            village(XIUSHUI, 2): "eligible: 1 station seen",
            village(SUNJIA, 1): "eligible: 1 station seen",
            village(SUNJIA, 2): "eligible: 1 station seen",
        }
        assert body["total_yuan"] == 4000

        r = await client.get(f"/v1/reports/{YUXIAN}/subsidies", params={"year": 2024, "format": "csv"})
        header, *rows = csv_rows(r.text)
        assert header == ["rule_id", "rule_name", "level", "code", "name", "eligible", "amount_yuan", "reason"]
        assert len(rows) == 1 + 5 + 19
        assert rows[2] == [
            "township-hub",
            "乡镇快递物流集散中心 township hub",
            "township",
            SUNJIA,
            "孙家庄镇",
            "false",
            "0",
            "parcels in 2024: 1 < 200,000",
        ]

        later = (await client.get(f"/v1/reports/{YUXIAN}/subsidies", params={"year": 2025})).json()
        assert (later["county"]["parcels"], later["townships"][0]["parcels"]) == (1, 1)

        for params, path, status in [
            ({"year": 2024}, "/v1/reports/1403/subsidies", 400),  # a city
            ({"year": 2024}, "/v1/reports/140399/subsidies", 404),
            ({}, f"/v1/reports/{YUXIAN}/subsidies", 400),  # year is required
            ({"year": 1999}, f"/v1/reports/{YUXIAN}/subsidies", 400),
        ]:
            r = await client.get(path, params=params)
            assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM), (path, params)


async def test_subsidy_report_with_a_rules_file(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    await subsidy_county(redis, settings, tmp_path)
    rules: dict[str, Any] = {
        "description": "a small county's rules",
        "rules": [
            {
                "id": "centre",
                "name": "共配中心",
                "level": "county",
                "amount_yuan": 50000,
                "conditions": {"min_parcels_per_year": 5, "min_coverage_rate": 0.25},
            },
            {
                "id": "hub",
                "name": "集散中心",
                "level": "township",
                "amount_yuan": 8000,
                "conditions": {"min_parcels_per_year": 1, "all_villages_have_station": True},
            },
            {
                "id": "station",
                "name": "服务站",
                "level": "village",
                "amount_yuan": 500,
                "conditions": {"has_station": True, "min_parcels_per_year": 1},
            },
        ],
    }
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules, ensure_ascii=False), encoding="utf-8")
    async with serving(app_for(settings, subsidy_rules_file=str(path))) as client:
        body = (await client.get(f"/v1/reports/{YUXIAN}/subsidies", params={"year": 2024})).json()
        assert body["rules_source"] == "LASTMILE_SUBSIDY_RULES_FILE (rules.json)"
        assert body["rules_description"] == "a small county's rules"
        got = {r["id"]: [u["code"] for u in r["units"] if u["eligible"]] for r in body["rules"]}
        # 5 parcels >= 5 and 5 of 19 >= ceil(0.25 * 19) = 5; 孙家庄镇: 1 parcel, stations in 2 of 2;
        # villages with a station and a parcel in 2024 (孙家庄镇's first had only an arrival).
        assert got == {
            "centre": [YUXIAN],
            "hub": [SUNJIA],
            "station": [village(XIUSHUI, 1), village(XIUSHUI, 2), village(SUNJIA, 2)],
        }
        assert body["total_yuan"] == 50000 + 8000 + 3 * 500
        no_parcel = next(u for u in body["rules"][2]["units"] if u["code"] == village(SUNJIA, 1))
        assert no_parcel["reason"] == "parcels in 2024: 0 < 1"

    path.write_text('{"rules": [{"id": "x", "name": "x", "level": "city", "amount_yuan": 1, "conditions": {}}]}')
    with pytest.raises(SettingsError, match=r"LASTMILE_SUBSIDY_RULES_FILE \(.*\): rules\[0\] \(x\).level: \"city\""):
        async with serving(app_for(settings, subsidy_rules_file=str(path))):
            pass
