"""The coverage API against a real redis-server and broker, over a hand-made read model.

The read model is written directly with the key layout of lastmile.names (as the registry loader and
the worker's apply script write it); every expected figure below is written out by hand. Every reach here
is from 2024, older than the lapse window: every reached village is lapsed, none active.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from lastmile import names
from lastmile.settings import Settings
from lastmile_dev import devstack
from tests.support.regulator_world import national_api

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
REACH_TYPES = ["arrived_at_station", "collected", "delivered", "picked_up"]

# -- the hand-made registry and read model ------------------------------------------------------------

UNITS = {
    "CN": ("全国", None),
    "14": ("山西省", "province"),
    "15": ("内蒙古自治区", "province"),
    "1403": ("阳泉市", "city"),
    "140302": ("城区", "county"),
    "140322": ("盂县", "county"),
    "140322100": ("秀水镇", "township"),
    "140322100201": ("东关村委会", "village"),
    "140322100202": ("西关村委会", "village"),
    "140322100001": ("城关社区居委会", "community"),
}
CHILDREN = {
    "CN": ["15", "14"],
    "14": ["1403"],
    "1403": ["140322", "140302"],
    "140322": ["140322100"],
    "140322100": ["140322100202", "140322100001", "140322100201"],
}
T_FIRST = 1711936984005  # 2024-04-01T02:03:04.005Z
T_VILLAGE = 1714523400123  # 2024-05-01T00:30:00.123Z
T_COMMUNITY = 1714514400000  # 2024-04-30T22:00:00.000Z
T_NEWEST = 1714525200500  # 2024-05-01T01:00:00.500Z
# Township 秀水镇 and everything above it: 2 administrative villages, 1 reached. Province 15 has 7
# villages (units not loaded in this registry), 2 reached; the nation 9, 3 reached. 城区 has none.
SHANXI: dict[Any, Any] = {
    "villages_total": "2",
    "villages_reached": "1",
    "villages_reached|carrier:sf": "1",
    "as_of_ms": str(T_VILLAGE),
    "type:arrived_at_station": "2",
    "type:delivered": "3",
    "type:collected": "1",
    "carrier:sf": "4",
    "carrier:yto": "2",
    "model:postal_express": "6",
    "vol:2024": "4",
}
REGIONS: dict[str, dict[Any, Any]] = {
    "CN": {
        "villages_total": "9",
        "villages_reached": "3",
        "villages_reached|carrier:sf": "1",
        "as_of_ms": str(T_NEWEST),
    },
    "15": {"villages_total": "7", "villages_reached": "2", "as_of_ms": str(T_NEWEST)},
    "14": SHANXI,
    "1403": SHANXI,
    "140322": SHANXI,
    "140322100": SHANXI,
}
LOCS: dict[str, dict[Any, Any]] = {
    "140322100201": {
        "reached": "1",
        "reached|carrier:sf": "1",
        "first_reach_ms": str(T_FIRST),
        "last_reach_ms": str(T_VILLAGE),
        "last_reach_ms|carrier:sf": str(T_VILLAGE),
        "type:arrived_at_station": "2",
        "type:delivered": "3",
        "type:collected": "1",
        "carrier:sf": "4",
        "carrier:yto": "2",
        "model:postal_express": "6",
    },
    "140322100001": {"reached": "1", "first_reach_ms": str(T_COMMUNITY), "last_reach_ms": str(T_COMMUNITY)},
}
# The lapse indexes: administrative villages only, scored by their last reach, per township and county.
INDEXES = {
    f"{region}{dim}": {"140322100201": T_VILLAGE} for region in ("140322100", "140322") for dim in ("", "|carrier:sf")
}


async def seed(redis: aioredis.Redis, p: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for code, (name, kind) in UNITS.items():
            pipe.hset(names.key(p, names.REG_UNIT, code), "name", name)
            if kind:
                pipe.hset(names.shard_key(p, code, names.REG_KIND), code, kind)
        for code, children in CHILDREN.items():
            pipe.sadd(names.key(p, names.REG_CHILDREN, code), *children)
        for code, fields in REGIONS.items():
            pipe.hset(names.key(p, names.REGION, code), mapping=fields)
        for code, fields in LOCS.items():
            pipe.hset(names.key(p, names.LOCATION, code), mapping=fields)
        for suffix, members in INDEXES.items():
            pipe.zadd(names.key(p, names.REACH_INDEX, suffix), members)
        pipe.hset(names.key(p, names.REG_META), names.meta.LOADED_AT, "2026-11-22T00:00:00+00:00")  # loaded whole
        await pipe.execute()


@pytest.fixture
async def client(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    await seed(redis, settings.redis_key_prefix)
    async with national_api(settings) as client:
        yield client


def region(
    code: str,
    name: str,
    level: str,
    total: int,
    reached: int,
    rate: float | None,
    as_of: str | None,
    stations: int = 0,
) -> Any:
    """A region's figures; every reach in this read model is older than the window, so all are lapsed."""
    return {
        "code": code,
        "name": name,
        "level": level,
        "villages_total": total,
        "villages_reached": reached,
        "coverage_rate": rate,
        "as_of": as_of,
        "villages_active": 0,
        "villages_lapsed": reached,
        "villages_with_station": stations,
    }


SHANXI_ROW = ("山西省", "province", 2, 1, 0.5, "2024-05-01T00:30:00.123Z")
NEIMENG = region("15", "内蒙古自治区", "province", 7, 2, 0.285714, "2024-05-01T01:00:00.500Z")
CITY = region("1403", "阳泉市", "city", 2, 1, 0.5, "2024-05-01T00:30:00.123Z")
CHENGQU = region("140302", "城区", "county", 0, 0, None, None)
YUXIAN = region("140322", "盂县", "county", 2, 1, 0.5, "2024-05-01T00:30:00.123Z")
TOWNSHIP = region("140322100", "秀水镇", "township", 2, 1, 0.5, "2024-05-01T00:30:00.123Z")
DONGGUAN = region("140322100201", "东关村委会", "village", 1, 1, 1.0, "2024-05-01T00:30:00.123Z")
XIGUAN = region("140322100202", "西关村委会", "village", 1, 0, 0.0, None)


# -- coverage --------------------------------------------------------------------------------------


async def test_national(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/coverage")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    definition = body.pop("definition")
    breakdown = body.pop("breakdown")
    assert body.pop("stale") is False  # caught up: nothing waits on the topic
    assert body == {
        **region("CN", "全国", "national", 9, 3, 0.333333, "2024-05-01T01:00:00.500Z"),
        "children": [region("14", *SHANXI_ROW), NEIMENG],
    }
    assert definition["reach_event_types"] == REACH_TYPES
    assert definition["counted_kinds"] == ["village"]
    assert definition["lapse_window_days"] == 30.0
    assert definition["scope"] == {"carrier": None, "cooperation_model": None, "min_population": None}
    assert breakdown["by_carrier"] == [
        {"carrier": "*", "villages_reached": 3, "villages_active": 0, "coverage_rate": 0.333333},
        {"carrier": "sf", "villages_reached": 1, "villages_active": 0, "coverage_rate": 0.111111},
    ]
    assert breakdown["by_cooperation_model"] == []


async def test_region_breakdown(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/coverage/14")).json()
    assert body["breakdown"] == {
        "by_carrier": [
            {"carrier": "*", "villages_reached": 1, "villages_active": 0, "coverage_rate": 0.5},
            {"carrier": "sf", "villages_reached": 1, "villages_active": 0, "coverage_rate": 0.5},
        ],
        "by_cooperation_model": [],
        "parcels": {
            "inbound": 5,
            "outbound": 1,
            "by_event_type": {
                "arrived_at_hub": 0,
                "out_for_delivery": 0,
                "arrived_at_station": 2,
                "delivered": 3,
                "picked_up": 0,
                "delivery_failed": 0,
                "collected": 1,
            },
            "by_year": {"2024": 4},
        },
    }


@pytest.mark.parametrize(
    ("code", "head", "children"),
    [
        ("14", region("14", *SHANXI_ROW), [CITY]),
        ("15", NEIMENG, []),
        ("1403", CITY, [CHENGQU, YUXIAN]),
        ("140302", CHENGQU, []),
        ("140322", YUXIAN, [TOWNSHIP]),
        # A township lists its administrative villages only: the community 140322100001 is left out.
        ("140322100", TOWNSHIP, [DONGGUAN, XIGUAN]),
    ],
)
async def test_region_and_children(client: httpx.AsyncClient, code: str, head: Any, children: Any) -> None:
    r = await client.get(f"/v1/coverage/{code}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {*head, "children", "definition", "breakdown", "stale"}
    assert {k: body[k] for k in head} == head
    assert body["children"] == children


async def test_village_detail(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/villages/140322100201")
    assert r.status_code == 200, r.text
    assert r.json().pop("stale") is False
    assert {k: v for k, v in r.json().items() if k != "stale"} == {
        "code": "140322100201",
        "name": "东关村委会",
        "kind": "village",
        "township": "140322100",
        "county": "140322",
        "city": "1403",
        "province": "14",
        "names": {"township": "秀水镇", "county": "盂县", "city": "阳泉市", "province": "山西省"},
        "population": None,
        "reached": True,
        "active": False,
        "first_reach_at": "2024-04-01T02:03:04.005Z",
        "last_reach_at": "2024-05-01T00:30:00.123Z",
        "reach_by_carrier": {"sf": "2024-05-01T00:30:00.123Z"},
        "stations": [],
        "counts": {
            "by_event_type": {
                "arrived_at_hub": 0,
                "out_for_delivery": 0,
                "arrived_at_station": 2,
                "delivered": 3,
                "picked_up": 0,
                "delivery_failed": 0,
                "collected": 1,
            },
            "by_carrier": {"sf": 4, "yto": 2},
            "by_cooperation_model": {"postal_express": 6},
            "inbound": 5,
            "outbound": 1,
        },
    }


async def test_village_never_reached_and_community(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/villages/140322100202")).json()
    assert (body["kind"], body["reached"], body["first_reach_at"], body["last_reach_at"]) == (
        "village",
        False,
        None,
        None,
    )
    assert set(body["counts"]["by_event_type"].values()) == {0}
    assert len(body["counts"]["by_event_type"]) == 7
    assert (body["counts"]["by_carrier"], body["counts"]["inbound"], body["counts"]["outbound"]) == ({}, 0, 0)
    assert (body["active"], body["reach_by_carrier"], body["stations"]) == (False, {}, [])

    body = (await client.get("/v1/villages/140322100001")).json()
    assert (body["kind"], body["reached"], body["last_reach_at"]) == ("community", True, "2024-04-30T22:00:00.000Z")


# -- errors ----------------------------------------------------------------------------------------


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    return body


@pytest.mark.parametrize(
    "path", ["/v1/coverage/99", "/v1/coverage/1499", "/v1/coverage/140322999", "/v1/villages/140322100999"]
)
async def test_unknown_code_is_404(client: httpx.AsyncClient, path: str) -> None:
    body = assert_problem(await client.get(path), 404)
    assert path.rsplit("/", 1)[1] in body["detail"]


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        ("/v1/coverage/1403229", None),
        ("/v1/coverage/14032", None),
        ("/v1/coverage/１４", None),  # full-width digits are digits to Python's str.isdigit, not to us
        ("/v1/coverage/%EF%BC%91%EF%BC%94", None),
        ("/v1/coverage/1", None),
        ("/v1/coverage/14a3", None),
        ("/v1/coverage/%2014", None),
        ("/v1/coverage/140322100201", "/v1/villages/140322100201"),
        ("/v1/villages/14032210020", None),
        ("/v1/villages/1403221002011", None),
        ("/v1/villages/１４０３２２１００２０１", None),
        ("/v1/villages/140322100", "/v1/coverage/140322100"),
    ],
)
async def test_malformed_code_is_400(client: httpx.AsyncClient, path: str, hint: str | None) -> None:
    body = assert_problem(await client.get(path), 400)
    assert body["type"].endswith("/invalid-code")
    if hint:
        assert hint in body["detail"]


async def test_cn_is_the_nation_in_region_paths_too(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/coverage/CN")).json() == (await client.get("/v1/coverage")).json()


async def test_coverage_exports_the_region_and_its_children_as_csv(client: httpx.AsyncClient) -> None:
    import csv
    import io

    r = await client.get("/v1/coverage", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [(row["code"], row["name"], row["villages_total"], row["villages_reached"]) for row in rows] == [
        ("CN", "全国", "9", "3"),
        ("14", SHANXI_ROW[0], str(SHANXI_ROW[2]), str(SHANXI_ROW[3])),
        ("15", NEIMENG["name"], str(NEIMENG["villages_total"]), str(NEIMENG["villages_reached"])),
    ]


async def test_framework_errors_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nowhere"), 404)
    assert_problem(await client.post("/v1/coverage"), 405)


async def test_redis_down_is_503(settings: Settings) -> None:
    dead = settings.replace(redis_url=f"redis://127.0.0.1:{devstack.free_port()}/0")
    async with national_api(dead) as client:
        for path in ("/v1/coverage", "/v1/coverage/14", "/v1/villages/140322100201"):
            r = await client.get(path)
            assert_problem(r, 503)
            assert r.headers["retry-after"]


# -- health ----------------------------------------------------------------------------------------


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_readyz_ok(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"redis": "ok", "read_model": "ok", "broker": "ok"}}


async def test_readyz_redis_unreachable(settings: Settings) -> None:
    dead = settings.replace(redis_url=f"redis://127.0.0.1:{devstack.free_port()}/0")
    async with national_api(dead) as client:
        r = await client.get("/readyz")
        body = assert_problem(r, 503)
        assert "redis" in body["detail"] and "broker" not in body["detail"]
        assert body["checks"]["broker"] == "ok" and body["checks"]["redis"] != "ok"
        assert r.headers["retry-after"]
        assert (await client.get("/healthz")).status_code == 200


async def test_readyz_stays_ready_without_the_broker_and_reports_it(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """The API reads only Redis: a broker outage is reported, never a reason to take regulators' figures away."""
    await seed(redis, settings.redis_key_prefix)
    port = devstack.free_port()
    later = settings.replace(kafka_bootstrap_servers=f"127.0.0.1:{port}")
    async with national_api(later) as client:
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["checks"]["broker"] != "ok" and r.json()["checks"]["redis"] == "ok"
        assert (await client.get("/v1/coverage")).status_code == 200  # figures do not need the broker
        proc, _ = devstack.start_broker(tmp_path, port)
        try:
            r = await client.get("/readyz")
            assert r.status_code == 200 and r.json()["checks"]["broker"] == "ok", r.text
        finally:
            proc.stop()


async def test_readyz_needs_a_whole_read_model(settings: Settings) -> None:
    empty = settings.replace(redis_key_prefix=settings.redis_key_prefix + "-empty")
    async with national_api(empty) as client:
        body = assert_problem(await client.get("/readyz"), 503)
        assert "read_model" in body["detail"] and "registry" in body["detail"], body
        assert body["checks"]["redis"] == "ok"


# -- metrics ---------------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics(settings: Settings, redis: aioredis.Redis, client: httpx.AsyncClient) -> None:
    topic, p = settings.scan_topic, settings.redis_key_prefix
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for partition, n in ((0, 5), (1, 4)):
            for i in range(n):
                await producer.send_and_wait(topic, f"record {i}".encode(), partition=partition)
    finally:
        await producer.stop()
    now_ms = int(time.time() * 1000)
    # Partition 0: offsets 0..1 of 0..4 applied -> lag 3. Partition 1: nothing applied -> lag 4.
    # Two shards (provinces 14 and 15): the counters are summed, the times are the latest of theirs.
    for shard, applied, duplicate, applied_ago, as_of_ago in (("14", 7, 1, 5_000, 60_000), ("15", 5, 2, 9_000, 90_000)):
        await redis.hset(names.shard_key(p, shard, names.OFFSETS), names.offset_field(topic, 0), "1")
        await redis.hset(
            names.shard_key(p, shard, names.STATS),
            mapping={"events_applied": applied, "events_duplicate": duplicate, "applied_at_ms": now_ms - applied_ago},
        )
        await redis.hset(names.key(p, names.REGION, shard), "as_of_ms", str(now_ms - as_of_ago))
    await client.get("/v1/coverage/14")
    await client.get("/v1/coverage/99")

    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    assert got[("lastmile_consumer_lag_records", (("partition", "0"), ("topic", topic)))] == 3
    assert got[("lastmile_consumer_lag_records", (("partition", "1"), ("topic", topic)))] == 4
    # The latest of the shards' times: as_of 60 s ago (shard 14), applied 5 s ago (shard 14).
    assert got[("lastmile_newest_event_timestamp_seconds", ())] == (now_ms - 60_000) / 1000
    assert got[("lastmile_last_applied_timestamp_seconds", ())] == (now_ms - 5_000) / 1000
    assert ("process_cpu_seconds_total", ()) in got
    assert got[("lastmile_events_applied_total", ())] == 12
    assert got[("lastmile_events_duplicate_total", ())] == 3
    assert got[("lastmile_records_replayed_total", ())] == 0
    assert got[("lastmile_coverage_dependency_up", (("dependency", "broker"),))] == 1
    info = await redis.info("memory")
    assert got[("lastmile_redis_memory_max_bytes", ())] == int(info["maxmemory"])
    assert got[("lastmile_redis_memory_used_bytes", ())] > 0
    assert got[("lastmile_read_model_full", ())] == 0
    if info["maxmemory"]:
        assert got[("lastmile_redis_memory_headroom_bytes", ())] > 0
    # Records wait (lag 7) and the last batch was applied 5 s ago: fresh within 60 s, stale past 1 s.
    assert got[("lastmile_read_model_stale", ())] == 0
    assert (await client.get("/v1/coverage/14")).json()["stale"] is False
    async with national_api(settings.replace(coverage_stale_after_seconds=1.0)) as strict:
        for _ in range(50):  # the watcher checks every second
            if samples((await strict.get("/metrics")).text)[("lastmile_read_model_stale", ())] == 1:
                break
            await asyncio.sleep(0.1)
        assert samples((await strict.get("/metrics")).text)[("lastmile_read_model_stale", ())] == 1
        # Every document of current figures says so too: the fast path's, the app's and the reports'.
        for path in (
            "/v1/coverage",
            "/v1/coverage/14",
            "/v1/coverage/14?carrier=sf",
            "/v1/villages/140322100201",
            "/v1/coverage/14/targets",
            "/v1/laggards/14?level=county",
            "/v1/coverage/140322/unreached",
        ):
            assert (await strict.get(path)).json()["stale"] is True, path
    route = "/v1/coverage/{code}"
    for status in ("200", "404"):
        key = (("method", "GET"), ("route", route), ("status", status))
        assert got[("lastmile_coverage_http_requests_total", key)] == 1
    assert got[("lastmile_coverage_http_request_duration_seconds_count", (("method", "GET"), ("route", route)))] == 2


async def test_metrics_without_a_topic_or_progress(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert "lastmile_consumer_lag_records{" not in r.text
    assert "lastmile_last_applied_timestamp_seconds" not in r.text
    assert "lastmile_events_applied_total 0.0" in r.text


# -- OpenAPI ---------------------------------------------------------------------------------------


async def test_openapi_lists_every_path_and_error(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    # Request validation errors are answered 400 (problem+json), so FastAPI's default 422 must not be promised.
    promised_422 = [(p, m) for p, ops in paths.items() for m, op in ops.items() if "422" in op["responses"]]
    assert promised_422 == []
    # Other routers (targets, history, reports, the stream) add their own paths and test them.
    assert {
        "/v1/coverage",
        "/v1/coverage/{code}",
        "/v1/coverage/{code}/unreached",
        "/v1/villages/{code}",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(paths)
    for path in ("/v1/coverage", "/v1/coverage/{code}", "/v1/coverage/{code}/unreached", "/v1/villages/{code}"):
        responses = paths[path]["get"]["responses"]
        for status in ("400", "401", "403", "503") + (("404",) if "{code}" in path else ()):
            assert PROBLEM in responses[status]["content"], (path, status)
        assert "application/json" in responses["200"]["content"]
    assert PROBLEM in paths["/readyz"]["get"]["responses"]["503"]["content"]

    def params(path: str) -> set[str]:
        return {p["name"] for p in paths[path]["get"]["parameters"] if p["in"] in ("query", "path")}

    scope = {"carrier", "cooperation_model", "min_population"}
    assert scope <= params("/v1/coverage")
    assert scope | {"code"} <= params("/v1/coverage/{code}")
    assert scope | {"code", "lapsed", "limit", "cursor"} <= params("/v1/coverage/{code}/unreached")

    def schema_of(path: str) -> dict[str, Any]:
        ref = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        found: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        return found

    core = {"code", "name", "level", "villages_total", "villages_reached", "coverage_rate", "as_of", "children"}
    for path in ("/v1/coverage", "/v1/coverage/{code}"):
        assert core | {"definition", "breakdown", "villages_active", "villages_lapsed"} <= set(
            schema_of(path)["properties"]
        )
    assert {"items", "next_cursor", "count", "scope", "lapse_window_days"} <= set(
        schema_of("/v1/coverage/{code}/unreached")["properties"]
    )
