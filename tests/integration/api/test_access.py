"""Scoped access: regulator tokens bound to a region prefix, carrier tokens refused, path tricks, budgets.

Real redis-server; the read model is the tiny world of regulator_world, loaded with the real loader.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from coverage_service.api.access import Access
from lastmile.settings import Settings, SettingsError
from tests.support.regulator_world import (
    CARRIER_TOKEN,
    CHENGQU,
    CHENGQU_TOKEN,
    DONGGUAN,
    DONGJIE,
    NATIONAL_TOKEN,
    XIUSHUI,
    YIJING,
    YUXIAN,
    YUXIAN_TOKEN,
    World,
    app_for,
    bearer,
    event,
    loaded_world,
    serving,
)

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
SAME = "same-token-for-both-0123"


@pytest.fixture
async def world(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> World:
    return await loaded_world(redis, settings, tmp_path / "registry", event(DONGGUAN), event(YIJING))


@pytest.fixture
async def client(world: World, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app_for(settings), token=None) as client:
        yield client


def problem(r: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"]
    if type_ is not None:
        assert body["type"].endswith("/" + type_), body
    return body


# -- who reads what -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", [f"/v1/coverage/{YUXIAN}", f"/v1/coverage/{XIUSHUI}", f"/v1/villages/{DONGGUAN}", f"/v1/stream/{YUXIAN}"]
)
async def test_a_county_token_reads_its_county_and_below(client: httpx.AsyncClient, path: str) -> None:
    r = await client.head(path, headers=bearer(YUXIAN_TOKEN)) if "stream" in path else None
    if r is not None:  # a stream answers HEAD with its headers; GET would not end
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return
    r = await client.get(path, headers=bearer(YUXIAN_TOKEN))
    assert r.status_code == 200, r.text
    assert r.json()["code"] == path.rsplit("/", 1)[1]


@pytest.mark.parametrize(
    ("path", "what"),
    [
        (f"/v1/coverage/{CHENGQU}", CHENGQU),  # the neighbouring county
        (f"/v1/coverage/{DONGJIE}", DONGJIE),  # a township of the neighbour
        (f"/v1/villages/{YIJING}", YIJING),  # a village of the neighbour
        ("/v1/coverage/1403", "1403"),  # the parent city
        ("/v1/coverage/14", "14"),  # the province
        ("/v1/coverage", "the whole country"),
        (f"/v1/stream/{CHENGQU}", CHENGQU),
        ("/v1/stream", "the whole country"),
    ],
)
async def test_a_county_token_is_refused_elsewhere(client: httpx.AsyncClient, path: str, what: str) -> None:
    body = problem(await client.get(path, headers=bearer(YUXIAN_TOKEN)), 403, "out-of-scope")
    assert what in body["detail"] and YUXIAN in body["detail"]
    assert body["region"] == YUXIAN


async def test_the_neighbour_reads_its_own_but_not_ours(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/v1/coverage/{CHENGQU}", headers=bearer(CHENGQU_TOKEN))).status_code == 200
    problem(await client.get(f"/v1/coverage/{YUXIAN}", headers=bearer(CHENGQU_TOKEN)), 403, "out-of-scope")


@pytest.mark.parametrize(
    "path", ["/v1/coverage", "/v1/coverage/14", f"/v1/coverage/{CHENGQU}", f"/v1/villages/{YIJING}"]
)
async def test_a_national_token_reads_everything(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path, headers=bearer(NATIONAL_TOKEN))
    assert r.status_code == 200, r.text


async def test_me_names_the_region_a_token_reads(client: httpx.AsyncClient) -> None:
    mine = (await client.get("/v1/me", headers=bearer(YUXIAN_TOKEN))).json()
    assert (mine["region"], mine["level"]) == (YUXIAN, "county")
    assert mine["name"].startswith(f"{YUXIAN}#") and YUXIAN_TOKEN not in mine["name"]
    national = (await client.get("/v1/me", headers=bearer(NATIONAL_TOKEN))).json()
    assert (national["region"], national["level"]) == ("CN", "national")
    problem(await client.get("/v1/me"), 401)
    problem(await client.get("/v1/me", headers=bearer(CARRIER_TOKEN)), 403)


@pytest.mark.parametrize(
    ("headers", "invalid"),
    [
        ({}, False),
        ({"Authorization": ""}, False),
        ({"Authorization": f"Basic {NATIONAL_TOKEN}"}, False),
        ({"Authorization": "Bearer "}, False),
        ({"Authorization": "Bearer not-a-known-token-0123456789"}, True),
        ({"Authorization": f"Bearer {NATIONAL_TOKEN}x"}, True),
    ],
)
async def test_no_token_or_an_unknown_one_is_401(client: httpx.AsyncClient, headers: dict[str, str], invalid: bool):
    for path in ("/v1/coverage", f"/v1/coverage/{YUXIAN}", f"/v1/villages/{DONGGUAN}", "/v1/stream"):
        r = await client.get(path, headers=headers)
        problem(r, 401, "unauthorized")
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith("Bearer realm=")
        assert ('error="invalid_token"' in challenge) is invalid
        assert NATIONAL_TOKEN not in r.text


async def test_a_carrier_token_cannot_read_coverage(client: httpx.AsyncClient) -> None:
    body = problem(await client.get("/v1/coverage", headers=bearer(CARRIER_TOKEN)), 403, "carrier-token")
    assert "carrier" in body["detail"] and "regulator token" in body["detail"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
async def test_health_metrics_and_docs_need_no_token(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 200, r.text


async def test_tokens_are_never_logged(world: World, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with serving(app_for(settings), token=None) as client:
        for token in (NATIONAL_TOKEN, YUXIAN_TOKEN, CARRIER_TOKEN, "not-a-known-token-0123456789"):
            await client.get(f"/v1/coverage/{CHENGQU}", headers=bearer(token))
    for token in (NATIONAL_TOKEN, YUXIAN_TOKEN, CARRIER_TOKEN, "not-a-known-token-0123456789"):
        assert token not in caplog.text


# -- path tricks: 400 before any Redis read -----------------------------------------------------------


class RedisSpy:
    """Records every command the app sends to Redis, single or pipelined."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[Any] = []
        single, pipelined = aioredis.Redis.execute_command, Pipeline.execute

        async def execute_command(client: Any, *args: Any, **options: Any) -> Any:
            self.commands.append(args)
            return await single(client, *args, **options)

        async def execute(pipe: Any, raise_on_error: bool = True) -> Any:
            self.commands.extend(cmd for cmd, _ in pipe.command_stack)
            return await pipelined(pipe, raise_on_error)

        monkeypatch.setattr(aioredis.Redis, "execute_command", execute_command)
        monkeypatch.setattr(Pipeline, "execute", execute)


@pytest.mark.parametrize(
    ("raw_path", "type_"),
    [
        (b"/v1/coverage/1403229", "invalid-code"),  # 7 digits
        (b"/v1/coverage/%EF%BC%91%EF%BC%94", "invalid-code"),  # full-width 14
        (b"/v1/coverage/" + quote("１４０３２２").encode(), "invalid-code"),
        (b"/v1/coverage/%2014", "invalid-code"),  # leading space
        (b"/v1/coverage/140322%20", "invalid-code"),  # trailing space
        (b"/v1/coverage/%09140322", "invalid-path"),  # a tab
        (b"/v1/coverage/../coverage/140302", "invalid-path"),
        (b"/v1/coverage/140322/../140302", "invalid-path"),
        (b"/v1/coverage/..%2F140302", "invalid-path"),
        (b"/v1/coverage/%2E%2E%2F140302", "invalid-path"),
        (b"/v1/coverage/14%2F03", "invalid-path"),
        (b"/v1/coverage/14%2f03", "invalid-path"),
        (b"/v1/coverage/14%5C03", "invalid-path"),
        (b"/v1/coverage/1403%0022", "invalid-path"),
        (b"/v1/villages/14032210020%EF%BC%91", "invalid-code"),
        (b"/v1/villages/./140322100201", "invalid-path"),
        (b"/v1/stream/1403229", "invalid-code"),
        (b"/v1/stream/%2E%2E", "invalid-path"),
    ],
)
async def test_path_tricks_are_400_before_redis(
    world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch, raw_path: bytes, type_: str
) -> None:
    app = app_for(settings)
    async with app.router.lifespan_context(app):
        spy = RedisSpy(monkeypatch)
        status, headers, body = await raw_get(app, raw_path, bearer(NATIONAL_TOKEN))
    assert status == 400, body
    assert headers["content-type"] == PROBLEM
    assert json.loads(body)["type"].endswith("/" + type_)
    assert spy.commands == []


async def raw_get(app: Any, raw_path: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """One GET straight through ASGI, the path exactly as a server would pass it (clients normalise dots)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("coverage.test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


async def test_the_spy_sees_a_normal_request(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = RedisSpy(monkeypatch)
    assert (await client.get(f"/v1/coverage/{YUXIAN}", headers=bearer(NATIONAL_TOKEN))).status_code == 200
    assert spy.commands


# -- rate limit ----------------------------------------------------------------------------------------


async def test_rate_limit_is_429_with_retry_after_then_recovers(world: World, settings: Settings) -> None:
    app = app_for(settings, coverage_rate_limit_per_second=2.0, coverage_rate_limit_burst=3)
    async with serving(app, token=YUXIAN_TOKEN) as client:
        path = f"/v1/coverage/{YUXIAN}"
        for _ in range(3):  # the burst
            assert (await client.get(path)).status_code == 200
        r = await client.get(path)
        body = problem(r, 429, "rate-limited")
        assert r.headers["retry-after"] == "1"  # half a second to the next request, rounded up
        assert "2 requests a second" in body["detail"]
        head = await client.head(path)  # HEAD spends the same budget
        assert (head.status_code, head.headers["retry-after"], head.content) == (429, "1", b"")
        # Another token has its own budget.
        assert (await client.get(f"/v1/coverage/{CHENGQU}", headers=bearer(CHENGQU_TOKEN))).status_code == 200
        await asyncio.sleep(1.1)  # two requests' worth refilled
        assert (await client.get(path)).status_code == 200
        assert (await client.get(path)).status_code == 200
        problem(await client.get(path), 429)
        # Health endpoints are never limited.
        assert all([(await client.get("/healthz")).status_code == 200 for _ in range(5)])


# -- settings ------------------------------------------------------------------------------------------


TOKENS = "LASTMILE_COVERAGE_REGULATOR_TOKENS"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"regulator_tokens": '{"national-token-0123456789": "1403229"}'},
            "LASTMILE_COVERAGE_REGULATOR_TOKENS: region prefix",
        ),
        (
            {"regulator_tokens": '{"national-token-0123456789": "CN"}'},
            "LASTMILE_COVERAGE_REGULATOR_TOKENS: region prefix",
        ),
        ({"regulator_tokens": '{"short": ""}'}, "LASTMILE_COVERAGE_REGULATOR_TOKENS: the token for '' is shorter"),
        ({"regulator_tokens": '["x"]'}, "LASTMILE_COVERAGE_REGULATOR_TOKENS: expected a JSON object"),
        ({"regulator_tokens": "{"}, "LASTMILE_COVERAGE_REGULATOR_TOKENS: not a JSON object"),
        ({"regulator_tokens_file": "/nonexistent/tokens.json"}, "LASTMILE_COVERAGE_REGULATOR_TOKENS_FILE: cannot read"),
        (
            {"regulator_tokens": json.dumps({SAME: ""}), "carrier_tokens": json.dumps({SAME: "sf"})},
            "LASTMILE_COVERAGE_REGULATOR_TOKENS: also a carrier",
        ),
        ({"coverage_rate_limit_burst": 0}, "LASTMILE_COVERAGE_RATE_LIMIT_BURST"),
        ({"coverage_rate_limit_per_second": -1.0}, "LASTMILE_COVERAGE_RATE_LIMIT_PER_SECOND"),
    ],
)
def test_unusable_token_settings_name_the_variable(settings: Settings, changes: dict[str, Any], message: str) -> None:
    """Refused at start (as the settings are read, or as the API reads the token files), the variable named."""
    with pytest.raises(SettingsError) as raised:
        Access.from_settings(settings.replace(**changes))
    text = str(raised.value)
    assert text.startswith(message.split(": ")[0]) and message.split(": ")[-1] in text, text


def test_tokens_from_a_file_and_the_variable_together(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"file-county-token-0123456789": "140322"}')
    both = settings.replace(regulator_tokens='{"env-national-token-0123456789": ""}', regulator_tokens_file=str(path))
    access = Access.from_settings(both)
    assert len(access) == 2
    assert access.identify("Bearer file-county-token-0123456789").region == "140322"
    assert access.identify("bearer env-national-token-0123456789").region == ""


# -- OpenAPI ---------------------------------------------------------------------------------------------


async def test_openapi_describes_the_bearer_scheme_and_its_errors(client: httpx.AsyncClient) -> None:
    doc: dict[str, Any] = (await client.get("/openapi.json")).json()
    scheme = doc["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "region" in scheme["description"]
    protected = 0
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            if path in ("/healthz", "/readyz", "/metrics"):
                assert "security" not in operation, path
                continue
            assert path.startswith("/v1/"), path
            assert operation["security"] == [{"HTTPBearer": []}], path
            for status in ("401", "403", "429"):
                assert PROBLEM in operation["responses"][status]["content"], (path, status)
            protected += 1
    assert {"/v1/stream", "/v1/stream/{code}"} <= set(doc["paths"])
    assert protected >= 6
