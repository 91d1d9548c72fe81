"""The fast read path of the coverage API: documents read in one script call, cached for a short max age,
answered before FastAPI's routing, against a real redis-server.

- The documents equal what the reference reads (views, breakdown) make, for every region and scope.
- A change in the read model shows once the cached figures are COVERAGE_FIGURES_MAX_AGE_SECONDS old.
- A token never gets a report outside its region, however warm the cache is.
- Concurrent requests for one report compute it once.
- The fast path answers exactly as the route does, and charges a token's budget once.
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

from coverage_service.api import fastpath
from coverage_service.api.documents import Documents
from coverage_service.readmodel import queries, resp
from coverage_service.readmodel.filters import ALL, Filter
from lastmile.settings import Settings
from tests.integration.api.test_figures_api import seed
from tests.support import oracle
from tests.support.regulator_world import (
    CHENGQU,
    CHENGQU_TOKEN,
    DONGGUAN,
    DONGJIE,
    DONGLIANG,
    JIA,
    XIGUAN,
    XIUSHUI,
    YIJING,
    YUXIAN,
    YUXIAN_TOKEN,
    World,
    app_for,
    bearer,
    event,
    loaded_world,
    request_counts,
    serving,
)

pytestmark = pytest.mark.integration

LAPSE_DAYS = 30
CODES = [
    "CN",
    "14",
    "15",
    "1403",
    "1501",
    "140321",
    "140322",
    "150121",
    "140322100",
    "140322205",
    "140321100",
    "16",
    "1499",
    "140399",
    "140322999",
]
SCOPES = [
    ALL,
    Filter(carrier="sf"),
    Filter(carrier="yto"),
    Filter(carrier="nobody"),
    Filter(cooperation_model="postal_express"),
    Filter(min_population=2500),
    Filter(carrier="sf", min_population=2500),
    Filter(cooperation_model="own_station", min_population=2500),
]
VILLAGE_CODES = ["140322100201", "140322100001", "140322205202", "140321100202", "140322100299"]


async def reference(redis: aioredis.Redis, prefix: str, code: str, flt: Filter, now_ms: int) -> Any:
    figures, parts = await asyncio.gather(
        oracle.region_figures(redis, prefix, code, flt, now_ms=now_ms, lapse_days=LAPSE_DAYS),
        oracle.region_breakdown(redis, prefix, code, flt, now_ms=now_ms, lapse_days=LAPSE_DAYS),
    )
    # Nothing waits on the topic of these tests: every document is fresh.
    return None if figures is None else {**figures, "stale": False, "breakdown": parts}


@pytest.fixture
async def fast(settings: Settings) -> AsyncIterator[resp.RespClient]:
    client = resp.RespClient.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize("pipelined", [True, False], ids=["resp", "redis-py"])
async def test_documents_equal_the_reference_reads(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path, fast: resp.RespClient, pipelined: bool
) -> None:
    await seed(redis, settings, tmp_path)
    prefix, now = settings.redis_key_prefix, int(time.time() * 1000)
    reader = queries.Reader.on(redis, prefix, fast=fast if pipelined else None)
    docs = Documents(reader, lapse_days=LAPSE_DAYS, max_age_s=0.0, wall_ms=lambda: now)
    compared = 0
    for flt in SCOPES:
        for code in CODES:
            expected = await reference(redis, prefix, code, flt, now)
            rendered = await docs.region(code, flt)
            assert (None if rendered is None else rendered.body) == expected, (code, flt)
            compared += expected is not None
    assert compared == 11 * len(SCOPES)
    for code in VILLAGE_CODES:
        detail, last_modified = await docs.village(code)
        reference_detail = await oracle.village_detail(redis, prefix, code, now_ms=now, lapse_days=LAPSE_DAYS)
        assert detail == (None if reference_detail is None else {**reference_detail, "stale": False})
        assert last_modified is not None and abs(last_modified - now) < 60_000
    await docs.close()


# -- through the API ----------------------------------------------------------------------------------


@pytest.fixture
async def world(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> World:
    return await loaded_world(redis, settings, tmp_path / "registry", event(DONGGUAN), event(YIJING))


async def test_an_unchanged_region_is_served_again_and_a_changed_one_made_again(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    """Past the max age a report is revalidated by its region's version: served again, neither made nor serialised
    again, while nothing below the region changed; made again after an event below it, on a new day, or after a
    registry load."""
    prefix = settings.redis_key_prefix
    clock, wall = [0.0], [int(time.time() * 1000)]
    docs = Documents(
        queries.Reader.on(world.redis, prefix),
        lapse_days=LAPSE_DAYS,
        max_age_s=0.5,
        clock=lambda: clock[0],
        wall_ms=lambda: wall[0],
    )

    async def report(code: str) -> Any:
        clock[0] += 1  # every read past the max age of the one before
        return await docs.region(code)

    county, township = await report(YUXIAN), await report(XIUSHUI)
    await world.apply(event(YIJING, days_ago=0.1))  # in 城区: neither region
    assert await report(YUXIAN) is county and await report(XIUSHUI) is township
    assert docs.revalidated == 2

    await world.apply(event(JIA, days_ago=0.1))  # in 东梁乡, in 盂县: newly reached
    changed = await report(YUXIAN)
    assert changed is not county and changed.body == await reference(world.redis, prefix, YUXIAN, ALL, wall[0])
    assert changed.body["villages_reached"] == county.body["villages_reached"] + 1
    assert await report(XIUSHUI) is township  # 秀水镇 is not 东梁乡

    wall[0] += 86_400_000  # the next day: the lapse window moved
    next_day = await report(XIUSHUI)
    assert next_day is not township and next_day.body == township.body  # nothing lapsed within a day here

    await world.load(tmp_path / "again")  # the same edition again: a new registry generation
    assert await report(XIUSHUI) is not next_day
    assert docs.revalidated == 3
    await docs.close()


async def reached(client: httpx.AsyncClient, path: str) -> int:
    r = await client.get(path)
    assert r.status_code == 200, r.text
    body = r.json()
    return int(body["villages_reached"] if "villages_reached" in body else body["reached"])


@pytest.mark.parametrize(
    "path", ["/v1/coverage", "/v1/coverage/14", f"/v1/coverage/{YUXIAN}", f"/v1/coverage/{DONGLIANG}"]
)
async def test_a_change_shows_once_the_cached_figures_are_max_age_old(
    world: World, settings: Settings, path: str
) -> None:
    max_age = 0.4
    async with serving(app_for(settings, coverage_figures_max_age_seconds=max_age)) as client:
        before = await reached(client, path)
        read = time.monotonic()
        await world.apply(event(JIA))  # 东梁乡 in 盂县: in every region above
        applied = time.monotonic()
        first = await reached(client, path)
        if time.monotonic() - read < max_age / 2:
            assert first == before  # served from the cache: the figures were read before the change
        while (now := await reached(client, path)) == before:
            # A cache that never expired fails here; the margin is for a loaded machine's stalls.
            assert time.monotonic() - applied < max_age + 3.0, "the change did not show once the max age passed"
            await asyncio.sleep(0.02)
        assert now == before + 1


async def test_village_details_are_never_cached(world: World, settings: Settings) -> None:
    async with serving(app_for(settings, coverage_figures_max_age_seconds=60.0)) as client:
        assert await reached(client, f"/v1/villages/{XIGUAN}") == 0
        await world.apply(event(XIGUAN))
        assert await reached(client, f"/v1/villages/{XIGUAN}") == 1  # at once


async def test_max_age_zero_reads_every_time(world: World, settings: Settings) -> None:
    async with serving(app_for(settings, coverage_figures_max_age_seconds=0.0)) as client:
        assert await reached(client, "/v1/coverage") == 2
        await world.apply(event(JIA))
        assert await reached(client, "/v1/coverage") == 3


@pytest.mark.parametrize("query", ["", "?carrier=sf"])
async def test_a_warm_cache_serves_no_region_outside_the_token(world: World, settings: Settings, query: str) -> None:
    app = app_for(settings, coverage_figures_max_age_seconds=60.0)
    outside = [
        "/v1/coverage",
        "/v1/coverage/CN",
        "/v1/coverage/14",
        "/v1/coverage/1403",
        f"/v1/coverage/{CHENGQU}",
        f"/v1/coverage/{DONGJIE}",
        f"/v1/villages/{YIJING}",
    ]
    async with serving(app) as national:
        for path in [*outside, f"/v1/coverage/{YUXIAN}"]:  # every report cached, by the national token
            assert (await national.get(path + query)).status_code == 200
        county = national.headers.copy()
        county.update(bearer(YUXIAN_TOKEN))
        for path in outside:
            r = await national.get(path + query, headers=county)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["type"].endswith("/out-of-scope")
            assert "villages_reached" not in r.text
        mine = await national.get(f"/v1/coverage/{YUXIAN}{query}", headers=county)
        theirs = await national.get(f"/v1/coverage/{YUXIAN}{query}")
        assert mine.status_code == 200 and mine.content == theirs.content  # one cached body, checked per request
        neighbour = national.headers.copy()
        neighbour.update(bearer(CHENGQU_TOKEN))
        assert (await national.get(f"/v1/coverage/{YUXIAN}{query}", headers=neighbour)).status_code == 403
        assert (await national.get(f"/v1/coverage/{CHENGQU}{query}", headers=neighbour)).status_code == 200


async def test_concurrent_requests_compute_a_report_once(world: World, settings: Settings) -> None:
    app = app_for(settings, coverage_figures_max_age_seconds=60.0)
    async with serving(app) as client:
        for path in ("/v1/coverage", f"/v1/coverage/{YUXIAN}"):
            answers = await asyncio.gather(*(client.get(path) for _ in range(40)))
            assert {r.status_code for r in answers} == {200}
            assert len({r.content for r in answers}) == 1
        documents = app.state.documents
        assert documents.reports.computed == 2  # the nation and 盂县, once each


FAST_PATHS = [
    "/v1/coverage",
    "/v1/coverage/CN",
    "/v1/coverage/14",
    "/v1/coverage/1403",
    f"/v1/coverage/{YUXIAN}",
    f"/v1/coverage/{XIUSHUI}",
    f"/v1/villages/{DONGGUAN}",
    f"/v1/villages/{XIGUAN}",
]


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the fast path answered itself."""
    seen: list[str] = []
    original = fastpath.FastPath.answer

    async def answer(self: fastpath.FastPath, method: str, route: str, code: str, headers: Any) -> Any:
        found = await original(self, method, route, code, headers)
        if isinstance(found, fastpath.Answer):
            seen.append(code)
        return found

    monkeypatch.setattr(fastpath.FastPath, "answer", answer)
    return seen


@pytest.mark.parametrize("path", FAST_PATHS)
async def test_the_fast_path_answers_as_the_route_does(
    world: World, settings: Settings, answered: list[str], path: str
) -> None:
    kept = ("etag", "last-modified", "cache-control", "vary", "content-type", "content-length")
    async with serving(app_for(settings)) as client:
        fast = await client.get(path)
        assert answered, "the fast path did not answer"
        answered.clear()
        routed = await client.get(path + "?format=json")  # a query: the route answers
        assert not answered
        assert fast.status_code == routed.status_code == 200
        assert fast.content == routed.content
        assert {k: fast.headers.get(k) for k in kept} == {k: routed.headers.get(k) for k in kept}
        head = await client.head(path)
        assert head.status_code == 200 and head.content == b""
        assert {k: head.headers.get(k) for k in kept} == {k: fast.headers.get(k) for k in kept}
        assert answered
        not_modified = await client.get(path, headers={"If-None-Match": fast.headers["etag"]})
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert not_modified.headers["etag"] == fast.headers["etag"]
        assert "content-type" not in not_modified.headers
        since = await client.get(path, headers={"If-Modified-Since": fast.headers["last-modified"]})
        assert since.status_code == 304


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        (f"/v1/coverage/{YUXIAN}", {"Accept": "text/csv"}, 200),  # the route makes the CSV
        (f"/v1/villages/{DONGGUAN}", {"Accept": "text/csv"}, 406),
        (f"/v1/coverage/{YUXIAN}", {"Authorization": "Bearer nope-nope-nope-nope"}, 401),
        (f"/v1/coverage/{YUXIAN}", {"Authorization": ""}, 401),
        ("/v1/coverage/16", {}, 404),
        ("/v1/villages/140322100299", {}, 404),
        ("/v1/coverage/%31%34", {}, 200),  # escapes: the app decodes them (14)
    ],
)
async def test_what_the_fast_path_hands_on(
    world: World, settings: Settings, answered: list[str], path: str, headers: dict[str, str], status: int
) -> None:
    async with serving(app_for(settings)) as client:
        r = await client.get(path, headers=headers)
        assert r.status_code == status, r.text
        assert not answered


async def test_a_request_handed_on_is_charged_once(world: World, settings: Settings) -> None:
    app = app_for(settings, coverage_rate_limit_per_second=0.01, coverage_rate_limit_burst=3)
    async with serving(app, token=YUXIAN_TOKEN) as client:
        # Each out-of-scope request is charged by the fast path, then answered by the route (not charged again).
        assert (await client.get("/v1/coverage/14")).status_code == 403
        assert (await client.get("/v1/coverage/16")).status_code == 403
        assert (await client.get(f"/v1/coverage/{YUXIAN}")).status_code == 200
        r = await client.get(f"/v1/coverage/{YUXIAN}")
        assert r.status_code == 429 and "retry-after" in r.headers


async def test_fast_answers_are_counted_by_route(world: World, settings: Settings) -> None:
    async with serving(app_for(settings)) as client:
        for path in ("/v1/coverage", f"/v1/coverage/{YUXIAN}", f"/v1/coverage/{YUXIAN}", f"/v1/villages/{DONGGUAN}"):
            assert (await client.get(path)).status_code == 200
        text = (await client.get("/metrics")).text
    counts = request_counts(text)
    assert counts[("/v1/coverage", "200")] == 1
    assert counts[("/v1/coverage/{code}", "200")] == 2
    assert counts[("/v1/villages/{code}", "200")] == 1
