"""The coverage API on aiohttp's server (COVERAGE_SERVER=aiohttp, the default), over real sockets.

The server's own fast path answers the hot requests; everything else goes through the ASGI bridge to the app:
CSV, problems, path tricks, HEAD, 304, keep-alive, metrics, a live stream that ends cleanly at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from regulator_world import (
    CHENGQU,
    DONGGUAN,
    NATIONAL_TOKEN,
    YIJING,
    YUXIAN,
    YUXIAN_TOKEN,
    World,
    app_for,
    bearer,
    event,
    loaded_world,
    request_counts,
)

from coverage_service import aioserve, api
from coverage_service.routes import stream
from lastmile import devstack
from lastmile.settings import Settings

pytestmark = pytest.mark.integration


@dataclass
class Running:
    url: str
    server: aioserve.AioServer
    task: asyncio.Task[None]


@pytest.fixture
async def world(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> World:
    return await loaded_world(redis, settings, tmp_path / "registry", event(DONGGUAN), event(YIJING))


@contextlib.asynccontextmanager
async def running(settings: Settings, **changes: object) -> AsyncIterator[Running]:
    port = devstack.free_port()
    app = app_for(settings, coverage_stream_poll_seconds=0.1, **changes)
    server = aioserve.AioServer(app, "127.0.0.1", port, on_shutdown=lambda: stream.stop(app),
                                front=api.server_front(app))  # fmt: skip
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, task
    try:
        yield Running(f"http://127.0.0.1:{port}", server, task)
    finally:
        server.stop()
        async with asyncio.timeout(15):  # open streams must not hold the shutdown
            await task


@pytest.fixture
async def live(world: World, settings: Settings) -> AsyncIterator[Running]:
    async with running(settings) as r:
        yield r


@pytest.fixture
async def client(live: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, headers=bearer(NATIONAL_TOKEN), timeout=10) as c:
        yield c


async def test_hot_requests_and_their_validators(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/v1/coverage/{YUXIAN}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["code"] == YUXIAN and r.json()["villages_reached"] == 1
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["cache-control"] == "private, max-age=30" and r.headers["vary"] == "Authorization, Accept"
    routed = await client.get(f"/v1/coverage/{YUXIAN}?format=json")  # through the bridge and the route
    assert routed.content == r.content and routed.headers["etag"] == r.headers["etag"]
    head = await client.head(f"/v1/coverage/{YUXIAN}")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(r.content))
    again = await client.get(f"/v1/coverage/{YUXIAN}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b"" and "content-type" not in again.headers
    village = await client.get(f"/v1/villages/{DONGGUAN}")
    assert village.status_code == 200 and village.json()["reached"] is True
    national = await client.get("/v1/coverage")
    assert national.status_code == 200 and national.json()["villages_reached"] == 2


async def test_the_rest_goes_through_the_app(client: httpx.AsyncClient) -> None:
    csv = await client.get(f"/v1/coverage/{YUXIAN}", headers={"Accept": "text/csv"})
    assert csv.status_code == 200 and csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert csv.content.startswith(b"\xef\xbb\xbfcode,name,level")
    assert csv.headers["content-disposition"].startswith("attachment;")
    missing = await client.get("/v1/coverage/16")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    out = await client.get(f"/v1/coverage/{CHENGQU}", headers=bearer(YUXIAN_TOKEN))
    assert out.status_code == 403 and out.json()["type"].endswith("/out-of-scope")
    nobody = await client.get(f"/v1/coverage/{YUXIAN}", headers={"Authorization": ""})
    assert nobody.status_code == 401 and "www-authenticate" in nobody.headers
    assert (await client.get("/v1/coverage/140322/unreached")).status_code == 200
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/openapi.json")).status_code == 200
    assert (await client.get("/nowhere")).status_code == 404
    post = await client.post("/v1/coverage", content=b'{"a": 1}')
    assert post.status_code == 405


@pytest.mark.parametrize(
    ("raw", "type_"),
    [
        ("/v1/coverage/..%2F140302", "invalid-path"),
        ("/v1/coverage/14%2f03", "invalid-path"),
        ("/v1/coverage/1403229", "invalid-code"),
        ("/v1/villages/14032210020%EF%BC%91", "invalid-code"),
    ],
)
async def test_path_tricks_are_refused(live: Running, raw: str, type_: str) -> None:
    reader, writer = await asyncio.open_connection(*live.url.removeprefix("http://").split(":"))
    try:
        writer.write(f"GET {raw} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {NATIONAL_TOKEN}\r\n"
                     "Connection: close\r\n\r\n".encode())  # fmt: skip
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert type_.encode() in body


async def test_one_connection_carries_many_requests(live: Running) -> None:
    reader, writer = await asyncio.open_connection(*live.url.removeprefix("http://").split(":"))
    try:
        request = f"GET /v1/coverage/{YUXIAN} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {NATIONAL_TOKEN}\r\n\r\n"
        writer.write(request.encode() * 3)  # pipelined
        for _ in range(3):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            lines = head.split(b"\r\n")
            length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
            assert b'"code":"140322"' in await reader.readexactly(length)
    finally:
        writer.close()


async def test_metrics_count_the_fast_and_the_routed_requests(client: httpx.AsyncClient) -> None:
    await client.get(f"/v1/coverage/{YUXIAN}")
    await client.get(f"/v1/coverage/{YUXIAN}?format=json")
    await client.get("/v1/coverage/16")
    text = (await client.get("/metrics")).text
    counts = request_counts(text)
    assert counts[("/v1/coverage/{code}", "200")] == 2
    assert counts[("/v1/coverage/{code}", "404")] == 1


async def test_a_live_stream_runs_and_ends_at_shutdown(world: World, settings: Settings) -> None:
    async with (
        running(settings) as live,
        httpx.AsyncClient(base_url=live.url, timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", f"/v1/stream/{YUXIAN}", headers=bearer(YUXIAN_TOKEN)) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        seen: list[str] = []
        async with asyncio.timeout(10):
            async for line in lines:
                seen.append(line)
                if line.startswith("data:"):
                    break
        assert any(line.startswith("event: coverage") for line in seen)
        await world.apply(event("140322100202"))  # 西关: the stream sends the change
        async with asyncio.timeout(10):
            async for line in lines:
                if line.startswith("data:") and '"villages_reached":2' in line:
                    break
        live.server.stop()
        async with asyncio.timeout(10):  # the server ends the stream: the body ends
            async for _ in lines:
                pass


async def test_a_client_that_leaves_gives_its_stream_back(world: World, settings: Settings) -> None:
    async with running(settings, coverage_streams_per_token=1) as live:
        streams = live.server.app.state.streams  # type: ignore[attr-defined]
        for _ in range(3):  # one stream a time, again and again: each is given back when its client leaves
            async with (
                httpx.AsyncClient(base_url=live.url, timeout=httpx.Timeout(10, read=None)) as client,
                client.stream("GET", f"/v1/stream/{YUXIAN}", headers=bearer(YUXIAN_TOKEN)) as response,
            ):
                assert response.status_code == 200
                async with asyncio.timeout(10):
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            break
            async with asyncio.timeout(10):
                while sum(streams._open.values()):  # noqa: ASYNC110 - the server gives it back when it notices
                    await asyncio.sleep(0.02)


async def test_a_failing_startup_stops_the_server() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("boom")
        yield  # pragma: no cover

    server = aioserve.AioServer(FastAPI(lifespan=lifespan), "127.0.0.1", devstack.free_port())
    with pytest.raises(RuntimeError, match=r"(?s)lifespan startup failed: .*boom"):
        async with asyncio.timeout(10):
            await server.serve()
    assert not server.started


async def test_the_lifespan_runs_around_the_server() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("up")
        yield {"greeting": "hello"}
        events.append("down")

    app = FastAPI(lifespan=lifespan)

    @app.get("/hello")
    async def hello(request: Request) -> dict[str, str]:
        return {"said": request.state.greeting}

    port = devstack.free_port()
    server = aioserve.AioServer(app, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 - a flag of the server's
            await asyncio.sleep(0.01)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{port}/hello")).json() == {"said": "hello"}
    assert events == ["up"]
    server.stop()
    await task
    assert events == ["up", "down"]
