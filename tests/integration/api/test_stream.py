"""Live figures over Server-Sent Events, served by a real uvicorn on a free port (in this process).

httpx's in-process ASGI transport buffers whole responses, so an endless stream needs a real server.
The read model is the tiny world of regulator_world; expected figures are counted by hand from it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from coverage_service.api.server import Server
from lastmile.settings import Settings
from lastmile_dev import devstack
from tests.support.regulator_world import (
    CHENGQU_TOKEN,
    DONGGUAN,
    JIA,
    NATIONAL_TOKEN,
    XIGUAN,
    YIJING,
    YUXIAN,
    YUXIAN_TOKEN,
    World,
    app_for,
    bearer,
    event,
    loaded_world,
)

pytestmark = pytest.mark.integration

# 盂县 in the world: 东关 西关 甲 are its administrative villages (the residents' committee never counts).
YUXIAN_ONE = {
    "code": YUXIAN,
    "name": "盂县",
    "level": "county",
    "villages_total": 3,
    "villages_reached": 1,
    "coverage_rate": 0.333333,
    "villages_active": 1,
    "villages_lapsed": 0,
    "villages_with_station": 0,
    "stale": False,  # nothing waits on the topic of this test
}


@dataclass
class Event:
    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return orjson.loads("\n".join(self.data))


class Reader:
    """Parses an event stream into blocks (a block ends at a blank line), as an EventSource would.

    A task reads the body into a queue, so a reader's timeouts never cut the HTTP stream itself.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._blocks: asyncio.Queue[Event | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._read(response))

    async def _read(self, response: httpx.Response) -> None:
        out = Event()
        try:
            async for line in response.aiter_lines():
                if line == "":
                    await self._blocks.put(out)
                    out = Event()
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    out.comments.append(value)
                elif name == "data":
                    out.data.append(value)
                elif name == "id":
                    out.id = value
                elif name == "event":
                    out.event = value
                elif name == "retry":
                    out.retry = int(value)
        finally:
            await self._blocks.put(None)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._task

    async def block(self, within: float = 5.0) -> Event:
        block = await asyncio.wait_for(self._blocks.get(), within)
        if block is None:
            self._blocks.put_nowait(None)
            raise EOFError("the stream ended")
        return block

    async def next_event(self, within: float = 5.0) -> Event:
        """The next block that carries data, skipping retry hints and keep-alive comments."""
        async with asyncio.timeout(within):
            while True:
                block = await self.block(within)
                if block.data:
                    return block

    async def nothing_for(self, seconds: float) -> list[Event]:
        """Blocks received within ``seconds``; the caller asserts none carried data."""
        got: list[Event] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    got.append(await self.block(seconds + 1))
        return got


@dataclass
class Live:
    url: str
    server: Server
    world: World

    @contextlib.asynccontextmanager
    async def stream(self, path: str, token: str = NATIONAL_TOKEN, **headers: str) -> AsyncIterator[Reader]:
        async with (
            httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", path, headers={**bearer(token), **headers}) as response,
        ):
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-store"
            reader = Reader(response)
            try:
                yield reader
            finally:
                await reader.close()


async def start(settings: Settings, world: World, **changes: Any) -> tuple[Live, asyncio.Task[None]]:
    port = devstack.free_port()
    changes = {"coverage_stream_poll_seconds": 0.1, "coverage_port": port, **changes}
    app = app_for(settings, **changes)
    server = Server(app, settings.replace(coverage_host="127.0.0.1", coverage_port=port))
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started, 10, "the server to start")
    return Live(f"http://127.0.0.1:{port}", server, world), task


async def stop(live: Live, task: asyncio.Task[None]) -> None:
    live.server.should_exit = True
    async with asyncio.timeout(10):  # open streams must not hold the shutdown
        await task


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def world(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> World:
    return await loaded_world(redis, settings, tmp_path / "registry", event(DONGGUAN))


@pytest.fixture
async def live(settings: Settings, world: World) -> AsyncIterator[Live]:
    running, task = await start(settings, world)
    try:
        yield running
    finally:
        await stop(running, task)


def figures(e: Event) -> dict[str, Any]:
    body = dict(e.json())
    body.pop("as_of")
    return body


async def test_current_figures_at_once_then_each_change(live: Live) -> None:
    async with live.stream(f"/v1/stream/{YUXIAN}", YUXIAN_TOKEN) as sse:
        hint = await sse.block()
        assert hint.retry is not None and hint.retry > 0
        first = await sse.next_event()
        assert first.event == "coverage" and first.id
        assert figures(first) == YUXIAN_ONE

        await live.world.apply(event(JIA))
        second = await sse.next_event()
        assert figures(second) == {**YUXIAN_ONE, "villages_reached": 2, "coverage_rate": 0.666667, "villages_active": 2}
        assert int(second.id.split("-")[0]) > int(first.id.split("-")[0])  # ids only go up

        # Events elsewhere (the neighbouring county) or repeats of known reaches change nothing here.
        await live.world.apply(event(YIJING), event(JIA))
        assert [b for b in await sse.nothing_for(0.6) if b.data] == []

        await live.world.apply(event(XIGUAN))
        third = await sse.next_event()
        assert (figures(third)["villages_reached"], figures(third)["coverage_rate"]) == (3, 1.0)


async def test_national_stream_and_a_filter(live: Live) -> None:
    async with live.stream("/v1/stream") as sse:
        body = figures(await sse.next_event())
        # The nation: 4 administrative villages (东关 西关 甲 of 盂县, 义井 of 城区), 东关 reached.
        assert (body["code"], body["level"]) == ("CN", "national")
        assert (body["villages_total"], body["villages_reached"]) == (4, 1)
    async with live.stream(f"/v1/stream/{YUXIAN}?carrier=yto") as sse:
        assert figures(await sse.next_event())["villages_reached"] == 0  # only sf has scanned here
        await live.world.apply(event(JIA, carrier="yto"))
        assert figures(await sse.next_event())["villages_reached"] == 1


async def test_resume_with_last_event_id(live: Live) -> None:
    async with live.stream(f"/v1/stream/{YUXIAN}") as sse:
        seen = await sse.next_event()
    assert seen.id is not None

    # The figures have not changed since: nothing is sent until they do.
    async with live.stream(f"/v1/stream/{YUXIAN}", **{"Last-Event-ID": seen.id}) as sse:
        assert [b for b in await sse.nothing_for(0.6) if b.data] == []
        await live.world.apply(event(JIA))
        resumed = await sse.next_event()
        assert figures(resumed)["villages_reached"] == 2
        assert int(resumed.id.split("-")[0]) > int(seen.id.split("-")[0])

    # They changed while the client was away: the current figures come at once.
    async with live.stream(f"/v1/stream/{YUXIAN}", **{"Last-Event-ID": seen.id}) as sse:
        assert figures(await sse.next_event(within=1))["villages_reached"] == 2

    # An id this server never made counts as no id.
    async with live.stream(f"/v1/stream/{YUXIAN}", **{"Last-Event-ID": "garbage"}) as sse:
        assert figures(await sse.next_event(within=1))["villages_reached"] == 2


async def test_keep_alive_comments(settings: Settings, world: World) -> None:
    running, task = await start(settings, world, coverage_stream_keepalive_seconds=0.3)
    try:
        async with running.stream(f"/v1/stream/{YUXIAN}") as sse:
            await sse.next_event()
            quiet = await sse.nothing_for(1.0)
            assert quiet and all(b.comments == ["keep-alive"] and not b.data for b in quiet)
    finally:
        await stop(running, task)


async def test_streams_per_token_cap_and_release(settings: Settings, world: World) -> None:
    running, task = await start(settings, world, coverage_streams_per_token=1)
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
            async with running.stream(f"/v1/stream/{YUXIAN}", YUXIAN_TOKEN) as sse:
                await sse.next_event()
                r = await client.get(f"/v1/stream/{YUXIAN}", headers=bearer(YUXIAN_TOKEN))
                assert (r.status_code, r.headers["content-type"]) == (429, "application/problem+json")
                assert r.json()["type"].endswith("/too-many-streams") and int(r.headers["retry-after"]) >= 1
                async with running.stream("/v1/stream/140302", CHENGQU_TOKEN) as other:  # its own allowance
                    await other.next_event()
            # The client left: its slot comes back once the server notices.
            streams = running.server.config.app.state.streams
            await until(lambda: not streams.open(streams_key(running, YUXIAN_TOKEN)), 5, "the slot to come back")
            async with running.stream(f"/v1/stream/{YUXIAN}", YUXIAN_TOKEN) as sse:
                await sse.next_event()
    finally:
        await stop(running, task)


def streams_key(live: Live, token: str) -> str:
    return str(live.server.config.app.state.access.identify(f"Bearer {token}").name)


async def test_shutdown_ends_open_streams_cleanly(settings: Settings, world: World) -> None:
    running, task = await start(settings, world)
    streams = running.server.config.app.state.streams
    async with running.stream(f"/v1/stream/{YUXIAN}") as sse:
        await sse.next_event()
        assert streams.open(streams_key(running, NATIONAL_TOKEN)) == 1
        running.server.should_exit = True
        with pytest.raises(EOFError):  # the server ends the stream: a clean end of the body
            while True:
                await sse.block(within=5)
    async with asyncio.timeout(10):
        await task
    assert streams.open(streams_key(running, NATIONAL_TOKEN)) == 0
    leftovers = [t for t in asyncio.all_tasks() if "_events" in repr(t.get_coro())]
    assert leftovers == []


async def test_streams_of_one_region_and_filter_share_one_channel_and_each_gets_every_change(
    settings: Settings, world: World
) -> None:
    running, task = await start(settings, world, coverage_streams_per_token=50)
    channels = running.server.config.app.state.streams.channels
    try:
        async with contextlib.AsyncExitStack() as opened:
            same = [await opened.enter_async_context(running.stream(f"/v1/stream/{YUXIAN}")) for _ in range(20)]
            other = await opened.enter_async_context(running.stream(f"/v1/stream/{YUXIAN}?carrier=yto"))
            for sse in [*same, other]:
                await sse.next_event()
            assert len(channels) == 2  # one per region and filter, not per stream
            await running.world.apply(event(JIA))
            for sse in same:
                assert figures(await sse.next_event())["villages_reached"] == 2
            assert [b for b in await other.nothing_for(0.3) if b.data] == []  # sf's scan: not yto's figures
        await until(lambda: len(channels) == 0, 5, "the channels to close with their last stream")
    finally:
        await stop(running, task)
