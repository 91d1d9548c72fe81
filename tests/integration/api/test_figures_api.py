"""Definitions, lapse, breakdowns, scope filters, village detail and the unreached list, over the real read model.

A hand-made registry folder (with a population column) is loaded with the registry loader, and scan events
dated in the past are applied with the worker's writer. Every expected figure below is written out by hand
from the tables VILLAGES and EVENTS, or counted from them in the test.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from coverage_service import fold
from coverage_service.api.app import create_app
from coverage_service.readmodel import unreached
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.writer import ReadModelWriter
from lastmile import scan
from lastmile.registry import read_registry
from lastmile.settings import Settings
from tests.support.regulator_world import serving

pytestmark = pytest.mark.integration

NATIONAL_TOKEN = "national-token-0123456789"
COUNTY_TOKEN = "pingding-county-token-0123"  # 平定县 140321 only
PROBLEM = "application/problem+json"
NOW = datetime.now(UTC).replace(microsecond=0)  # whole seconds: every time below is exact to the millisecond
LAPSE_DAYS = 30  # the default window
CST = timezone(timedelta(hours=8))

# -- the registry: two provinces, three counties, four townships ------------------------------------------

REGIONS = {
    "provinces": (["code", "name"], [["14", "山西省"], ["15", "内蒙古自治区"]]),
    "cities": (["code", "name", "provinceCode"], [["1403", "阳泉市", "14"], ["1501", "呼和浩特市", "15"]]),
    "areas": (
        ["code", "name", "cityCode", "provinceCode"],
        [["140321", "平定县", "1403", "14"], ["140322", "盂县", "1403", "14"], ["150121", "土默特左旗", "1501", "15"]],
    ),
    "streets": (
        ["code", "name", "areaCode", "provinceCode", "cityCode"],
        [
            ["140321100", "冠山镇", "140321", "14", "1403"],
            ["140322100", "秀水镇", "140322", "14", "1403"],
            ["140322205", "东梁乡", "140322", "14", "1403"],
            ["150121100", "察素齐镇", "150121", "15", "1501"],
        ],
    ),
}
# code -> (name, population or None); the classification rule makes 城关社区居委会 a community, the rest villages.
VILLAGES: dict[str, tuple[str, int | None]] = {
    "140321100201": ("子村委会", 5000),
    "140321100202": ("丑村委会", 100),
    "140322100001": ("城关社区居委会", 8000),
    "140322100201": ("东关村委会", 3000),
    "140322100202": ("西关村委会", 1200),
    "140322100203": ("南关村委会", 2600),
    "140322100204": ("北关村委会", 2500),
    "140322205201": ("甲村委会", 2500),
    "140322205202": ("乙村委会", None),
    "140322205203": ("丙村委会", 900),
    "150121100201": ("把什村委会", 3000),
}
COMMUNITIES = {"140322100001"}
TOWNSHIP_NAMES = {"140321100": "冠山镇", "140322100": "秀水镇", "140322205": "东梁乡", "150121100": "察素齐镇"}

# (carrier, event_type, location, days ago, station_id, cooperation_model)
EVENTS: list[tuple[str, str, str, int, str | None, str | None]] = [
    ("sf", "delivered", "140322100201", 40, "S1", "postal_express"),  # 东关
    ("yto", "picked_up", "140322100201", 2, "S2", None),  # 东关 again, within the window
    ("sf", "delivered", "140322100202", 40, None, None),  # 西关: lapsed
    ("sf", "delivered", "140322100203", 2, None, "own_station"),  # 南关
    ("ems", "out_for_delivery", "140322100204", 1, None, None),  # 北关: not a reach
    ("jd", "arrived_at_station", "140322100001", 1, None, None),  # a community: reached, never counted
    ("yto", "delivered", "140322205201", 400, None, None),  # 甲, last year
    ("yto", "collected", "140322205201", 40, None, None),  # 甲: lapsed
    ("yto", "delivery_failed", "140322205203", 3, None, None),  # 丙: not a reach
    ("zto", "delivered", "140321100201", 2, "S3", "postal_express"),  # 子
    ("sf", "arrived_at_hub", "140322100", 1, None, None),  # at the township
]
REACH = {"delivered", "picked_up", "collected", "arrived_at_station"}


def t(days: int) -> str:
    """The response form of the time ``days`` before NOW."""
    return (NOW - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def write_registry(folder: Path) -> Path:
    folder.mkdir()
    for stem, (header, rows) in REGIONS.items():
        with open(folder / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
    with open(folder / "villages.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["code", "name", "streetCode", "provinceCode", "cityCode", "areaCode", "population"])
        for code, (name, pop) in VILLAGES.items():
            w.writerow([code, name, code[:9], code[:2], code[:4], code[:6], "" if pop is None else pop])
    return folder


def entries() -> list[fold.Entry]:
    out = []
    for i, (carrier, event_type, code, days, station, model) in enumerate(EVENTS):
        raw: dict[str, Any] = {
            "event_id": f"e{i}",
            "carrier": carrier,
            "waybill": f"W{i}",
            "event_type": event_type,
            "location_code": code,
            "occurred_at": (NOW - timedelta(days=days)).isoformat(),
        }
        if station:
            raw["station_id"] = station
        if model:
            raw["cooperation_model"] = model
        if event_type == "delivery_failed":
            raw["reason"] = "无人签收"
        parsed = scan.validate(raw, now=datetime.now(UTC))
        assert isinstance(parsed, scan.ScanEvent), parsed
        out.append(fold.entry(parsed))
    return out


def app_settings(settings: Settings, **changes: Any) -> Settings:
    tokens = json.dumps({NATIONAL_TOKEN: "", COUNTY_TOKEN: "140321"})
    return settings.replace(regulator_tokens=tokens, coverage_rate_limit_per_second=0.0, **changes)


async def seed(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    p = settings.redis_key_prefix
    await load_registry(redis, p, read_registry(write_registry(tmp_path / "registry")), population_tiers=(2500,))
    await ReadModelWriter(redis, p, 3600).apply([fold.Record("scans", 0, 0, entries())])


def serve(settings: Settings) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return serving(create_app(settings), NATIONAL_TOKEN)


@pytest.fixture
async def client(settings: Settings, redis: aioredis.Redis, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    await seed(redis, settings, tmp_path)
    async with serve(app_settings(settings)) as c:
        yield c


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


def assert_problem(r: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"]
    if type_:
        assert body["type"].endswith("/" + type_), body
    return body


def fig(
    code: str,
    name: str,
    level: str,
    total: int,
    reached: int,
    rate: float | None,
    as_of: str | None,
    active: int,
    lapsed: int,
    stations: int,
) -> dict[str, Any]:
    return {
        "code": code,
        "name": name,
        "level": level,
        "villages_total": total,
        "villages_reached": reached,
        "coverage_rate": rate,
        "as_of": as_of,
        "villages_active": active,
        "villages_lapsed": lapsed,
        "villages_with_station": stations,
    }


def entry(key: str, name: str, reached: int, active: int, rate: float | None) -> dict[str, Any]:
    return {key: name, "villages_reached": reached, "villages_active": active, "coverage_rate": rate}


def head_and_children(body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    assert body["stale"] is False  # caught up: nothing waits on the topic
    head = {k: v for k, v in body.items() if k not in ("children", "definition", "breakdown", "stale")}
    return head, body["children"]


# -- definitions and the lapse window -------------------------------------------------------------------


async def test_national_figures_lapse_and_definition(client: httpx.AsyncClient) -> None:
    body = await get(client, "/v1/coverage")
    assert set(body) == {
        "code",
        "name",
        "level",
        "villages_total",
        "villages_reached",
        "stale",
        "coverage_rate",
        "as_of",
        "villages_active",
        "villages_lapsed",
        "villages_with_station",
        "children",
        "definition",
        "breakdown",
    }
    head, children = head_and_children(body)
    # 10 villages; reached: 东关 西关 南关 甲 子; active (reached in the window): 东关 南关 子; stations: 东关 子.
    assert head == fig("CN", "全国", "national", 10, 5, 0.5, t(1), 3, 2, 2)
    assert children == [
        fig("14", "山西省", "province", 9, 5, 0.555556, t(1), 3, 2, 2),
        fig("15", "内蒙古自治区", "province", 1, 0, 0.0, None, 0, 0, 0),
    ]
    d = body["definition"]
    assert d["reach_event_types"] == sorted(REACH)
    assert d["counted_kinds"] == ["village"]
    assert d["lapse_window_days"] == LAPSE_DAYS
    assert d["scope"] == {"carrier": None, "cooperation_model": None, "min_population": None}
    for key in (
        "reached",
        "counted_units",
        "classification_rule",
        "coverage_rate",
        "active",
        "lapsed",
        "as_of",
        "villages_with_station",
    ):
        assert isinstance(d[key], str) and d[key], key
    assert "村委会" in d["classification_rule"] and "30 days" in d["active"]


async def test_county_and_township_lapse(client: httpx.AsyncClient) -> None:
    head, children = head_and_children(await get(client, "/v1/coverage/140322"))
    assert head == fig("140322", "盂县", "county", 7, 4, 0.571429, t(1), 2, 2, 1)
    assert children == [
        fig("140322100", "秀水镇", "township", 4, 3, 0.75, t(1), 2, 1, 1),
        fig("140322205", "东梁乡", "township", 3, 1, 0.333333, t(3), 0, 1, 0),
    ]
    head, children = head_and_children(await get(client, "/v1/coverage/140322100"))
    assert head == fig("140322100", "秀水镇", "township", 4, 3, 0.75, t(1), 2, 1, 1)
    assert children == [  # the community is not listed
        fig("140322100201", "东关村委会", "village", 1, 1, 1.0, t(2), 1, 0, 1),
        fig("140322100202", "西关村委会", "village", 1, 1, 1.0, t(40), 0, 1, 0),
        fig("140322100203", "南关村委会", "village", 1, 1, 1.0, t(2), 1, 0, 0),
        fig("140322100204", "北关村委会", "village", 1, 0, 0.0, None, 0, 0, 0),
    ]
    head, children = head_and_children(await get(client, "/v1/coverage/1403"))
    assert head == fig("1403", "阳泉市", "city", 9, 5, 0.555556, t(1), 3, 2, 2)
    assert [c["code"] for c in children] == ["140321", "140322"]
    assert children[0] == fig("140321", "平定县", "county", 2, 1, 0.5, t(2), 1, 0, 1)


async def test_a_longer_lapse_window_is_in_force(settings: Settings, redis: aioredis.Redis, tmp_path: Path) -> None:
    await seed(redis, settings, tmp_path)
    async with serve(app_settings(settings, lapse_window_days=50.0)) as client:
        body = await get(client, "/v1/coverage")
        # 40 days old is within 50 days: every reached village is active.
        assert (body["villages_active"], body["villages_lapsed"]) == (5, 0)
        assert body["definition"]["lapse_window_days"] == 50.0
        page = await get(client, "/v1/coverage/140322/unreached", lapsed="true")
        assert [r["code"] for r in page["items"]] == ["140322100204", "140322205202", "140322205203"]
        assert page["lapse_window_days"] == 50.0


# -- breakdowns and scope filters ---------------------------------------------------------------------------


def volume_by_year(events: list[tuple[str, str, str, int, str | None, str | None]]) -> dict[str, int]:
    volume = Counter(
        str((NOW - timedelta(days=d)).astimezone(CST).year)
        for _, et, _, d, _, _ in events
        if et in ("delivered", "picked_up", "collected")
    )
    return dict(sorted(volume.items()))


async def test_national_breakdown(client: httpx.AsyncClient) -> None:
    b = (await get(client, "/v1/coverage"))["breakdown"]
    # ems (no reach) and jd (a community only) reached no administrative village: not listed.
    assert b["by_carrier"] == [
        entry("carrier", "*", 5, 3, 0.5),
        entry("carrier", "sf", 3, 1, 0.3),  # 东关 西关 (40 days), 南关 (2 days)
        entry("carrier", "yto", 2, 1, 0.2),  # 东关 (2 days), 甲 (40 days)
        entry("carrier", "zto", 1, 1, 0.1),
    ]
    assert b["by_cooperation_model"] == [
        entry("cooperation_model", "own_station", 1, 1, 0.1),
        entry("cooperation_model", "postal_express", 2, 1, 0.2),  # 东关 (40 days), 子 (2 days)
    ]
    assert b["parcels"] == {
        "inbound": 7,
        "outbound": 1,
        "by_event_type": {
            "arrived_at_hub": 1,
            "out_for_delivery": 1,
            "arrived_at_station": 1,
            "delivered": 5,
            "picked_up": 1,
            "delivery_failed": 1,
            "collected": 1,
        },
        "by_year": volume_by_year(EVENTS),
    }
    assert sum(b["parcels"]["by_year"].values()) == 7


async def test_county_breakdown(client: httpx.AsyncClient) -> None:
    body = await get(client, "/v1/coverage/140322")
    b = body["breakdown"]
    assert b["by_carrier"] == [
        entry("carrier", "*", 4, 2, 0.571429),
        entry("carrier", "sf", 3, 1, 0.428571),
        entry("carrier", "yto", 2, 1, 0.285714),
    ]
    assert b["by_cooperation_model"] == [
        entry("cooperation_model", "own_station", 1, 1, 0.142857),
        entry("cooperation_model", "postal_express", 1, 0, 0.142857),
    ]
    assert (b["parcels"]["inbound"], b["parcels"]["outbound"], b["parcels"]["by_event_type"]["delivered"]) == (6, 1, 4)
    assert b["parcels"]["by_year"] == volume_by_year([e for e in EVENTS if e[2].startswith("140322")])
    assert all("breakdown" not in child for child in body["children"])


async def test_carrier_filter_on_head_children_and_breakdown(client: httpx.AsyncClient) -> None:
    body = await get(client, "/v1/coverage/140322", carrier="sf")
    head, children = head_and_children(body)
    # Stations are not per carrier: villages_with_station stays the any-carrier figure.
    assert head == fig("140322", "盂县", "county", 7, 3, 0.428571, t(1), 1, 2, 1)
    assert children == [
        fig("140322100", "秀水镇", "township", 4, 3, 0.75, t(1), 1, 2, 1),
        fig("140322205", "东梁乡", "township", 3, 0, 0.0, t(3), 0, 0, 0),
    ]
    assert body["breakdown"] == {
        "by_carrier": [entry("carrier", "sf", 3, 1, 0.428571)],
        "by_cooperation_model": None,
        "parcels": None,
    }
    assert body["definition"]["scope"] == {"carrier": "sf", "cooperation_model": None, "min_population": None}

    _, villages = head_and_children(await get(client, "/v1/coverage/140322100", carrier="sf"))
    assert [(v["code"], v["villages_reached"], v["villages_active"], v["villages_lapsed"]) for v in villages] == [
        ("140322100201", 1, 0, 1),  # sf's own last reach is 40 days old, yto's is not
        ("140322100202", 1, 0, 1),
        ("140322100203", 1, 1, 0),
        ("140322100204", 0, 0, 0),
    ]

    head, children = head_and_children(await get(client, "/v1/coverage", carrier="sf"))
    assert head == fig("CN", "全国", "national", 10, 3, 0.3, t(1), 1, 2, 2)
    assert [(c["code"], c["villages_reached"], c["villages_active"]) for c in children] == [("14", 3, 1), ("15", 0, 0)]


async def test_cooperation_model_filter(client: httpx.AsyncClient) -> None:
    body = await get(client, "/v1/coverage", cooperation_model="postal_express")
    head, _ = head_and_children(body)
    assert (head["villages_reached"], head["villages_active"], head["villages_lapsed"]) == (2, 1, 1)
    assert body["breakdown"] == {
        "by_carrier": None,
        "parcels": None,
        "by_cooperation_model": [entry("cooperation_model", "postal_express", 2, 1, 0.2)],
    }


async def test_min_population_filters_every_figure(client: httpx.AsyncClient) -> None:
    # Priority villages (≥ 2,500 people): 东关 南关 北关 甲 子 把什; 乙 (unknown) and the community are out.
    body = await get(client, "/v1/coverage", min_population=2500)
    head, children = head_and_children(body)
    assert head == fig("CN", "全国", "national", 6, 4, 0.666667, t(1), 3, 1, 2)
    assert children == [
        fig("14", "山西省", "province", 5, 4, 0.8, t(1), 3, 1, 2),
        fig("15", "内蒙古自治区", "province", 1, 0, 0.0, None, 0, 0, 0),
    ]
    assert body["breakdown"] == {
        "by_carrier": [
            entry("carrier", "*", 4, 3, 0.666667),
            entry("carrier", "sf", 2, 1, 0.333333),
            entry("carrier", "yto", 2, 1, 0.333333),
            entry("carrier", "zto", 1, 1, 0.166667),
        ],
        "by_cooperation_model": [
            entry("cooperation_model", "own_station", 1, 1, 0.166667),
            entry("cooperation_model", "postal_express", 2, 1, 0.333333),
        ],
        "parcels": None,
    }
    assert body["definition"]["scope"]["min_population"] == 2500

    head, children = head_and_children(await get(client, "/v1/coverage/140322", min_population=2500))
    assert head == fig("140322", "盂县", "county", 4, 3, 0.75, t(1), 2, 1, 1)
    assert children == [
        fig("140322100", "秀水镇", "township", 3, 2, 0.666667, t(1), 2, 0, 1),
        fig("140322205", "东梁乡", "township", 1, 1, 1.0, t(3), 0, 1, 0),
    ]
    _, villages = head_and_children(await get(client, "/v1/coverage/140322100", min_population=2500))
    assert [v["code"] for v in villages] == ["140322100201", "140322100203", "140322100204"]

    sf = await get(client, "/v1/coverage/140322", min_population=2500, carrier="sf")
    assert (sf["villages_total"], sf["villages_reached"], sf["villages_active"]) == (4, 2, 1)  # 东关 南关; 南关


@pytest.mark.parametrize("path", ["/v1/coverage", "/v1/coverage/140322", "/v1/coverage/140322/unreached"])
async def test_scope_errors(client: httpx.AsyncClient, path: str) -> None:
    body = assert_problem(await client.get(path, params={"min_population": 1234}), 400, "invalid-filter")
    assert "2500" in body["detail"]
    params = {"carrier": "sf", "cooperation_model": "postal_express"}
    assert_problem(await client.get(path, params=params), 400, "invalid-filter")
    assert_problem(await client.get(path, params={"cooperation_model": "teleport"}), 400)
    assert_problem(await client.get(path, params={"carrier": "SF!"}), 400)


# -- village detail ---------------------------------------------------------------------------------------


async def test_village_detail_stations_population_activity(client: httpx.AsyncClient) -> None:
    body = await get(client, "/v1/villages/140322100201")
    assert body["population"] == 3000
    assert body["stations"] == ["S1", "S2"]
    assert (body["reached"], body["active"]) == (True, True)
    assert (body["first_reach_at"], body["last_reach_at"]) == (t(40), t(2))
    assert body["reach_by_carrier"] == {"sf": t(40), "yto": t(2)}
    assert body["counts"]["by_carrier"] == {"sf": 1, "yto": 1}
    assert body["counts"]["by_cooperation_model"] == {"postal_express": 1}

    body = await get(client, "/v1/villages/140322100202")  # 西关: lapsed
    assert (body["population"], body["stations"], body["reached"], body["active"]) == (1200, [], True, False)
    assert body["reach_by_carrier"] == {"sf": t(40)}

    body = await get(client, "/v1/villages/140322205202")  # 乙: no population, never reached
    assert (body["population"], body["reached"], body["active"], body["reach_by_carrier"]) == (None, False, False, {})

    body = await get(client, "/v1/villages/140322100001")  # the community
    assert (body["kind"], body["active"], body["reach_by_carrier"]) == ("community", True, {"jd": t(1)})


# -- the unreached list -----------------------------------------------------------------------------------


def expected_list(prefix: str, *, lapsed: bool, min_population: int | None = None) -> list[str]:
    """Counted from the tables: administrative villages under ``prefix`` never reached, or (``lapsed``) whose
    newest reach is older than the window."""
    newest: dict[str, int] = {}
    for _, event_type, code, days, _, _ in EVENTS:
        if event_type in REACH:
            newest[code] = min(days, newest.get(code, days))
    out = []
    for code, (_, pop) in sorted(VILLAGES.items()):
        if not code.startswith(prefix) or code in COMMUNITIES:
            continue
        if min_population is not None and (pop is None or pop < min_population):
            continue
        if code not in newest or (lapsed and newest[code] >= LAPSE_DAYS):
            out.append(code)
    return out


def row(code: str, status: str, last: str | None) -> dict[str, Any]:
    name, pop = VILLAGES[code]
    return {
        "code": code,
        "name": name,
        "township": code[:9],
        "township_name": TOWNSHIP_NAMES[code[:9]],
        "county": code[:6],
        "status": status,
        "last_reach_at": last,
        "population": pop,
    }


async def test_unreached_and_lapsed(client: httpx.AsyncClient) -> None:
    page = await get(client, "/v1/coverage/140322/unreached")
    assert page == {
        "code": "140322",
        "name": "盂县",
        "level": "county",
        "scope": {"carrier": None, "cooperation_model": None, "min_population": None},
        "lapse_window_days": LAPSE_DAYS,
        "registry_edition": None,  # loaded without --edition
        "items": [
            row("140322100204", "unreached", None),
            row("140322205202", "unreached", None),
            row("140322205203", "unreached", None),
        ],
        "next_cursor": None,
        "count": 3,
        "stale": False,  # nothing waits on the topic of these tests
    }
    page = await get(client, "/v1/coverage/140322/unreached", lapsed="true")
    assert page["items"] == [
        row("140322100202", "lapsed", t(40)),
        row("140322100204", "unreached", None),
        row("140322205201", "lapsed", t(40)),
        row("140322205202", "unreached", None),
        row("140322205203", "unreached", None),
    ]
    assert [r["code"] for r in page["items"]] == expected_list("140322", lapsed=True)
    assert page["count"] == 5 and page["next_cursor"] is None


async def test_unreached_in_a_scope(client: httpx.AsyncClient) -> None:
    page = await get(client, "/v1/coverage/140322205/unreached", carrier="sf")  # sf never reached 东梁乡
    assert [(r["code"], r["status"]) for r in page["items"]] == [
        ("140322205201", "unreached"),
        ("140322205202", "unreached"),
        ("140322205203", "unreached"),
    ]
    assert page["scope"]["carrier"] == "sf"
    # In sf's scope 东关 is lapsed (yto's recent reach does not count for sf) and shows sf's last reach.
    page = await get(client, "/v1/coverage/140322100/unreached", carrier="sf", lapsed="true")
    assert [(r["code"], r["status"], r["last_reach_at"]) for r in page["items"]] == [
        ("140322100201", "lapsed", t(40)),
        ("140322100202", "lapsed", t(40)),
        ("140322100204", "unreached", None),
    ]
    page = await get(client, "/v1/coverage/140322/unreached", min_population=2500, lapsed="true")
    assert [(r["code"], r["status"]) for r in page["items"]] == [
        ("140322100204", "unreached"),
        ("140322205201", "lapsed"),
    ]
    assert [r["code"] for r in page["items"]] == expected_list("140322", lapsed=True, min_population=2500)


@pytest.mark.parametrize("townships_per_round", [1, 256])
@pytest.mark.parametrize("limit", [1, 2, 4, 6])
async def test_unreached_pages_across_counties_and_townships(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, limit: int, townships_per_round: int
) -> None:
    monkeypatch.setattr(unreached, "TOWNSHIPS_PER_ROUND", townships_per_round)
    codes: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"lapsed": "true", "limit": limit, **({"cursor": cursor} if cursor else {})}
        page = await get(client, "/v1/coverage/14/unreached", **params)
        pages += 1
        assert page["count"] == len(page["items"]) <= limit
        assert page["items"], "no page is empty: next_cursor is null on the last one"
        codes += [r["code"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert page["count"] == limit
        assert pages < 10
    want = expected_list("14", lapsed=True)
    assert want == ["140321100202", "140322100202", "140322100204", "140322205201", "140322205202", "140322205203"]
    assert codes == want
    assert pages == -(-len(want) // limit)


async def test_unreached_csv(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/coverage/140322/unreached", params={"lapsed": "true", "format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert "unreached-140322.csv" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0] == ["code", "name", "township", "township_name", "county", "status", "last_reach_at", "population"]
    assert rows[1] == ["140322100202", "西关村委会", "140322100", "秀水镇", "140322", "lapsed", t(40), "1200"]
    assert [r[0] for r in rows[1:]] == expected_list("140322", lapsed=True)


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "%%%",
        base64.urlsafe_b64encode(b"not json").decode(),
        cursor_of([1, 2]),
        cursor_of({"after": 140322100202}),
        cursor_of({"after": "1403221002"}),
        cursor_of({"after": "140322100202", "more": 1}),
        cursor_of({"after": "140321100202"}),  # a village of another county
        "A" * 500,
    ],
)
async def test_malformed_cursor_is_400(client: httpx.AsyncClient, cursor: str) -> None:
    assert_problem(await client.get("/v1/coverage/140322/unreached", params={"cursor": cursor}), 400, "invalid-cursor")


@pytest.mark.parametrize(
    ("path", "params", "status", "type_"),
    [
        ("/v1/coverage/140399/unreached", {}, 404, "unknown-code"),
        ("/v1/coverage/140322999/unreached", {}, 404, "unknown-code"),
        ("/v1/coverage/1403221/unreached", {}, 400, "invalid-code"),
        ("/v1/coverage/140322100201/unreached", {}, 400, "invalid-code"),
        ("/v1/coverage/CN/unreached", {}, 400, "invalid-code"),
        ("/v1/coverage/140322/unreached", {"limit": 0}, 400, None),
        ("/v1/coverage/140322/unreached", {"limit": 1001}, 400, None),
        ("/v1/coverage/140322/unreached", {"lapsed": "perhaps"}, 400, None),
    ],
)
async def test_unreached_errors(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], status: int, type_: str | None
) -> None:
    assert_problem(await client.get(path, params=params), status, type_)


async def test_routes_keep_to_the_token_region(client: httpx.AsyncClient) -> None:
    county = {"Authorization": f"Bearer {COUNTY_TOKEN}"}
    r = await client.get("/v1/coverage/140321/unreached", headers=county)
    assert r.status_code == 200, r.text
    assert [x["code"] for x in r.json()["items"]] == ["140321100202"]
    for path in ("/v1/coverage/140322/unreached", "/v1/coverage/140322", "/v1/coverage", "/v1/villages/140322100201"):
        assert_problem(await client.get(path, headers=county), 403)
    assert_problem(await client.get("/v1/coverage/140322/unreached", headers={"Authorization": ""}), 401)
