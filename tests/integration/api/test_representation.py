"""Representations: CSV exports, Accept negotiation, ETag / Last-Modified / 304, Cache-Control, HEAD.

Real redis-server; the read model is the tiny world of regulator_world, loaded with the real loader and
writer. Expected rows are written out by hand from that world.
"""

from __future__ import annotations

import asyncio
import csv
import email.utils
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from prometheus_client.parser import text_string_to_metric_families

from coverage_service.api.representation import Table, respond
from lastmile.settings import Settings
from tests.support.regulator_world import (
    DONGGUAN,
    DONGLIANG,
    JIA,
    XIGUAN,
    XIUSHUI,
    YUXIAN,
    World,
    app_for,
    event,
    loaded_world,
    serving,
)

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
CSV_TYPE = "text/csv; charset=utf-8"
BOM = b"\xef\xbb\xbf"
UNREACHED = f"/v1/coverage/{YUXIAN}/unreached"
COUNTY = f"/v1/coverage/{YUXIAN}"
FIXED_MS = 1714523400123  # 2024-05-01T00:30:00.123Z


@pytest.fixture
async def world(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> World:
    return await loaded_world(
        redis, settings, tmp_path / "registry", event(DONGGUAN)
    )  # 盂县: 东关 reached; 西关 and 甲 not (the community never counts)


def tiny_routes(app: FastAPI) -> None:
    """Routes answering through respond(), for what the real routes do not exercise."""

    async def table(request: Request) -> Response:
        rows = [["盂县", "=SUM(A1)", None, True, 0.5, 3, ["sf", "yto"]], ["城区", "-1", "", False, 0.0, 0, {}]]
        body = {"items": rows}
        table = Table(["名称", "note", "empty", "flag", "rate", "n", "list"], rows)
        return respond(request, body, table=table, filename="盂县 未通达/名单")

    async def fixed(request: Request) -> Response:
        return respond(request, {"fixed": True}, last_modified_ms=FIXED_MS)

    app.add_api_route("/test/table", table)
    app.add_api_route("/test/fixed", fixed)


@pytest.fixture
async def client(world: World, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = app_for(settings)
    tiny_routes(app)
    async with serving(app) as client:
        yield client


def rows_of(r: httpx.Response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"), newline="")))


# -- CSV -----------------------------------------------------------------------------------------------

HEADER = ["code", "name", "township", "township_name", "county", "status", "last_reach_at", "population"]
EXPECTED_ROWS = [
    [XIGUAN, "西关村委会", XIUSHUI, "秀水镇", YUXIAN, "unreached", "", ""],
    [JIA, "甲村委会", DONGLIANG, "东梁乡", YUXIAN, "unreached", "", ""],
]


async def test_csv_export_round_trips_with_chinese_names(client: httpx.AsyncClient) -> None:
    r = await client.get(UNREACHED, params={"format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CSV_TYPE
    assert r.headers["content-disposition"] == 'attachment; filename="unreached-140322.csv"'
    assert r.content.startswith(BOM)
    assert r.content.count(b"\r\n") == 3 and b"\n" not in r.content.replace(b"\r\n", b"")
    assert rows_of(r) == [HEADER, *EXPECTED_ROWS]

    by_accept = await client.get(UNREACHED, headers={"Accept": "text/csv"})
    assert by_accept.content == r.content and by_accept.headers["etag"] == r.headers["etag"]
    as_json = await client.get(UNREACHED)
    assert as_json.headers["content-type"] == "application/json"
    assert [[i["code"], i["name"]] for i in as_json.json()["items"]] == [row[:2] for row in EXPECTED_ROWS]
    assert as_json.headers["etag"] != r.headers["etag"]


async def test_csv_cells_and_a_non_ascii_filename(client: httpx.AsyncClient) -> None:
    r = await client.get("/test/table", params={"format": "csv"})
    assert r.status_code == 200, r.text
    # Slash and space are unsafe in a file name; the ASCII fallback keeps no Chinese.
    exact = quote("盂县_未通达_名单.csv")
    assert r.headers["content-disposition"] == f"attachment; filename=\"export.csv\"; filename*=UTF-8''{exact}"
    assert rows_of(r) == [
        ["名称", "note", "empty", "flag", "rate", "n", "list"],
        ["盂县", "'=SUM(A1)", "", "true", "0.5", "3", '["sf","yto"]'],  # a formula is defused
        ["城区", "'-1", "", "false", "0.0", "0", "{}"],
    ]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/json", "application/json"),
        ("text/csv", CSV_TYPE),
        ("text/csv, */*", CSV_TYPE),  # named more specifically than */*
        ("text/*", CSV_TYPE),
        ("text/csv;q=0.5, application/json", "application/json"),
        ("application/json;q=0.1, text/*", CSV_TYPE),
        ("text/*;q=0.3, application/*;q=0.2", CSV_TYPE),
        ("TEXT/CSV", CSV_TYPE),
        ("text/csv;charset=utf-8;q=0.9, application/json;q=0.8", CSV_TYPE),
        ("application/json, text/csv;q=0", "application/json"),
        ("text/html, */*;q=0.1", "application/json"),
        ("text/csv;q=bogus, application/json;q=0.2", "application/json"),  # a malformed range is skipped
        ("text/html", 406),
        ("application/xml, text/csv;q=0", 406),
        ("*/*;q=0", 406),
    ],
)
async def test_accept_negotiation(client: httpx.AsyncClient, accept: str | None, expected: str | int) -> None:
    r = await client.get(UNREACHED, headers={"Accept": accept} if accept else {})
    if isinstance(expected, int):
        assert (r.status_code, r.headers["content-type"]) == (expected, PROBLEM), r.text
        assert "application/json or text/csv" in r.json()["detail"]
    else:
        assert (r.status_code, r.headers["content-type"]) == (200, expected), r.text


async def test_format_parameter(client: httpx.AsyncClient) -> None:
    r = await client.get(UNREACHED, params={"format": "csv"}, headers={"Accept": "application/json"})
    assert r.headers["content-type"] == CSV_TYPE  # the parameter wins over Accept
    r = await client.get(UNREACHED, params={"format": "json"}, headers={"Accept": "text/csv"})
    assert r.headers["content-type"] == "application/json"
    for bad in ("xml", "", "csv2"):
        r = await client.get(UNREACHED, params={"format": bad})
        assert (r.status_code, r.headers["content-type"]) == (400, PROBLEM)
        assert r.json()["type"].endswith("/invalid-format")


@pytest.mark.parametrize(
    ("params", "headers"),
    [({"format": "csv"}, {}), ({}, {"Accept": "text/csv"}), ({}, {"Accept": "text/csv, application/json;q=0"})],
)
async def test_csv_of_a_non_list_endpoint_is_406(
    client: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str]
) -> None:
    r = await client.get(f"/v1/villages/{DONGGUAN}", params=params, headers=headers)
    assert (r.status_code, r.headers["content-type"]) == (406, PROBLEM), r.text
    assert "CSV is for list endpoints" in r.json()["detail"]


async def test_json_when_a_non_list_endpoint_is_also_asked_for_json(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/v1/villages/{DONGGUAN}", headers={"Accept": "text/csv, application/json;q=0.5"})
    assert (r.status_code, r.headers["content-type"]) == (200, "application/json")


# -- validators, 304, caching ----------------------------------------------------------------------------


def http_seconds(value: str) -> int:
    return int(email.utils.parsedate_to_datetime(value).timestamp())


async def test_304_round_trip_and_a_new_etag_after_an_event(client: httpx.AsyncClient, world: World) -> None:
    first = await client.get(COUNTY)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10  # strong
    assert first.headers["cache-control"] == "private, max-age=30"
    assert first.headers["vary"] == "Authorization, Accept"
    applied_s = http_seconds(first.headers["last-modified"])
    assert abs(applied_s - time.time()) < 60  # the worker's (here: the writer's) last apply

    for validator in (etag, f"W/{etag}", f'"nope", {etag}', "*", f'"a,b", W/{etag}'):
        r = await client.get(COUNTY, headers={"If-None-Match": validator})
        assert r.status_code == 304, validator
        assert r.content == b""
        assert r.headers["etag"] == etag
        assert r.headers["cache-control"] == "private, max-age=30"
        assert r.headers["vary"] == "Authorization, Accept"
        assert r.headers["last-modified"] == first.headers["last-modified"]
        assert "content-type" not in r.headers
    assert (await client.get(COUNTY, headers={"If-None-Match": '"something-else"'})).status_code == 200
    assert (await client.get(COUNTY)).headers["etag"] == etag  # same data, same bytes, same tag

    await asyncio.sleep(1.01)  # Last-Modified has whole seconds
    await world.apply(event(JIA))
    r = await client.get(COUNTY, headers={"If-None-Match": etag})
    assert r.status_code == 200
    assert r.headers["etag"] != etag
    assert (r.json()["villages_total"], r.json()["villages_reached"]) == (3, 2)  # 东关, 甲 of 东关 西关 甲
    assert http_seconds(r.headers["last-modified"]) > applied_s
    assert (await client.get(COUNTY, headers={"If-None-Match": r.headers["etag"]})).status_code == 304


async def test_if_modified_since(client: httpx.AsyncClient) -> None:
    r = await client.get("/test/fixed")
    assert r.headers["last-modified"] == "Wed, 01 May 2024 00:30:00 GMT"  # the route's own time
    etag = r.headers["etag"]

    def ims(value: str, **more: str) -> dict[str, str]:
        return {"If-Modified-Since": value, **more}

    assert (await client.get("/test/fixed", headers=ims("Wed, 01 May 2024 00:30:00 GMT"))).status_code == 304
    assert (await client.get("/test/fixed", headers=ims("Thu, 02 May 2024 00:00:00 GMT"))).status_code == 304
    assert (await client.get("/test/fixed", headers=ims("Wed, 01 May 2024 00:29:59 GMT"))).status_code == 200
    assert (await client.get("/test/fixed", headers=ims("not a date"))).status_code == 200
    # If-None-Match, when present, decides alone.
    stale = ims("Thu, 02 May 2024 00:00:00 GMT", **{"If-None-Match": '"other"'})
    assert (await client.get("/test/fixed", headers=stale)).status_code == 200
    fresh = ims("Wed, 01 May 2024 00:00:00 GMT", **{"If-None-Match": etag})
    assert (await client.get("/test/fixed", headers=fresh)).status_code == 304


async def test_cache_max_age_setting(world: World, settings: Settings) -> None:
    async with serving(app_for(settings, coverage_cache_max_age_seconds=90)) as client:
        assert (await client.get(COUNTY)).headers["cache-control"] == "private, max-age=90"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_health_endpoints_have_no_validators(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    assert "etag" not in r.headers and "last-modified" not in r.headers


# -- HEAD ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [COUNTY, "/v1/coverage", f"/v1/villages/{DONGGUAN}", f"{UNREACHED}?format=csv"])
async def test_head_is_get_without_the_body(client: httpx.AsyncClient, path: str) -> None:
    get, head = await client.get(path), await client.head(path)
    assert (head.status_code, head.content) == (200, b"")
    for name in ("etag", "last-modified", "content-type", "content-length", "cache-control", "vary"):
        assert head.headers[name] == get.headers[name], name
    r = await client.head(path, headers={"If-None-Match": get.headers["etag"]})
    assert (r.status_code, r.content) == (304, b"")


async def test_head_errors_and_metrics(client: httpx.AsyncClient) -> None:
    r = await client.head("/v1/coverage/99")
    assert (r.status_code, r.headers["content-type"], r.content) == (404, PROBLEM, b"")
    assert (await client.head("/healthz")).status_code == 200
    text = (await client.get("/metrics")).text
    samples = {
        (s.labels.get("method"), s.labels.get("route"), s.labels.get("status")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "lastmile_coverage_http_requests_total"
    }
    assert samples[("HEAD", "/v1/coverage/{code}", "404")] == 1
    assert samples[("HEAD", "/healthz", "200")] == 1


# -- OpenAPI ---------------------------------------------------------------------------------------------


async def test_openapi_declares_formats_304_and_406_on_every_get(client: httpx.AsyncClient) -> None:
    doc: dict[str, Any] = (await client.get("/openapi.json")).json()
    checked = 0
    for path, operations in doc["paths"].items():
        get = operations.get("get")
        if get is None or not get.get("security") or path.startswith("/v1/stream"):
            continue
        checked += 1
        assert {"304", "406"} <= set(get["responses"]), path
        assert PROBLEM in get["responses"]["406"]["content"]
        assert "text/csv" in get["responses"]["200"]["content"], path
        formats = [p for p in get["parameters"] if p["name"] == "format"]
        assert len(formats) == 1 and formats[0]["schema"]["enum"] == ["json", "csv"], path
    assert checked >= 4
