"""The open-loop load generator against a small local server that stalls once: requests keep falling due during the
stall and each counts its wait from its due time, even when it could only go out after the stall, so the stall
shows in the percentiles (a closed loop, or latency counted from the send, would hide it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from lastmile_dev.bench.openloop import open_loop

pytestmark = pytest.mark.integration

RATE = 200.0
SECONDS = 2.0
STALL_FROM, STALL_FOR = 0.5, 0.5


@pytest.fixture
async def stalling_server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A server answering 200 at once while ``open`` is set; the test clears it to stall every answer."""
    open_ = asyncio.Event()
    open_.set()
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        await open_.wait()
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", open_
    finally:
        await runner.cleanup()
        assert seen and set(seen) == {"Bearer tok"}


async def test_a_stall_shows_in_the_latencies_of_every_request_due_during_it(
    stalling_server: tuple[str, asyncio.Event],
) -> None:
    url, open_ = stalling_server

    async def stall() -> None:
        await asyncio.sleep(STALL_FROM)
        open_.clear()
        await asyncio.sleep(STALL_FOR)
        open_.set()

    stalling = asyncio.create_task(stall())
    # Four connections: during the stall all four are busy and the requests falling due queue for one, so they go
    # out only after it. Counted from when they went out they would look fast; from their due time they do not.
    run = await open_loop(url, "tok", ["/a", "/b"], RATE, SECONDS, connections=4)
    await stalling
    assert run.due == int(RATE * SECONDS)
    assert run.completed == run.due and run.statuses == {200: run.due} and run.errors == 0
    # RATE * STALL_FOR = 100 of the 400 requests fell due in the stall, each waiting up to STALL_FOR from its due
    # time: some 80 waited over 0.1 s, so p90 is beyond it.
    assert run.percentiles_ms[90.0] >= 100.0, run.percentiles_ms
    assert run.max_ms >= 0.8 * STALL_FOR * 1000
    assert run.percentiles_ms[50.0] < 100.0  # most requests, due outside the stall, were answered at once
