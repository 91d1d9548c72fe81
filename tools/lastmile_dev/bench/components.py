"""Scenario: the coverage API's hand-made parts against the libraries they stand in for, in the same run.

The pipelining Redis client (readmodel/resp.py) against redis-py with hiredis, and the fast path (api/fastpath.py)
against FastAPI's routing, each measured as this process's CPU per call on the filled read model. A hand-made part
is kept only while the library costs more than the API's budget: one core at the issue's 5,000 requests/s.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI

from coverage_service.api.app import create_app
from coverage_service.readmodel import queries, resp
from coverage_service.readmodel.filters import ALL
from lastmile import redis_client
from lastmile_dev import devstack
from lastmile_dev.bench.api_load import wrk_load
from lastmile_dev.bench.core import Context, Figure, Result
from lastmile_dev.bench.registry_load import registry_of

BUDGET_US: Final = 1e6 / 5_000  # one core at 5,000 requests/s (the read-path issue's target)
CONCURRENCY: Final = 64
CALLS: Final = 4_000
QUICK_CALLS: Final = 200


async def cpu_per_call(call: Callable[[int], Awaitable[Any]], n: int, concurrency: int = CONCURRENCY) -> float:
    """This process's CPU µs per call, ``n`` calls with ``concurrency`` in flight (after a warm-up)."""
    for i in range(min(n, 50)):
        await call(i)
    pending = iter(range(n))

    async def worker() -> None:
        for i in pending:
            await call(i)

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / n * 1e6


async def asgi_get(app: FastAPI, path: str, token: str) -> int:
    """One GET through the ASGI app, with no client library in between; the status."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "app": app,
    }
    await app(scope, receive, send)
    return status


# A constant answer served by uvicorn the way the coverage API is (httptools, uvloop): its CPU per request is the
# server's share, which the app's must leave room for within the budget.
CONSTANT_APP: Final = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"code": "CN"}'})
"""


async def server_share(workdir: Path, seconds: float) -> float | None:
    """uvicorn's CPU µs per request for a constant answer under wrk (64 connections); None without wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    (workdir / "constant_app.py").write_text(CONSTANT_APP)
    port = devstack.free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "constant_app:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        cwd=workdir,
    )
    try:
        deadline = time.monotonic() + 30
        while not devstack.port_open("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise RuntimeError("the constant uvicorn app did not start")
            await asyncio.sleep(0.1)
        before = devstack.cpu_seconds(server.pid)
        run = await wrk_load(wrk, f"http://127.0.0.1:{port}", "-", ["/"], CONCURRENCY, seconds, workdir)
        return (devstack.cpu_seconds(server.pid) - before) / max(1, run.requests) * 1e6
    finally:
        server.terminate()
        await server.wait()


async def run(ctx: Context) -> Result:
    stack, config = ctx.stack, ctx.config
    settings = stack.settings.replace(coverage_rate_limit_per_second=0.0)
    registry = await registry_of(ctx)
    counties = [u.code for u in registry.counties]
    codes = random.Random(config.seed).choices(counties, k=512)
    n = QUICK_CALLS if config.quick else CALLS
    result = Result("components")
    redis = redis_client.connect(settings)  # the API's own client: 64 documents in flight need a waiting pool
    fast = resp.RespClient.from_url(settings.redis_url)
    try:
        prefix, lapse = settings.redis_key_prefix, settings.lapse_window_days
        readers = {"redis-py": queries.Reader.on(redis, prefix), "resp": queries.Reader.on(redis, prefix, fast=fast)}
        client_us: dict[str, float] = {}
        for name, reader in readers.items():
            ctx.progress(f"components: documents through {name}", 0, 1)

            async def read(i: int, reader: queries.Reader = reader) -> Any:
                now = int(time.time() * 1000)
                return await reader.region_report(codes[i % len(codes)], ALL, now_ms=now, lapse_days=lapse)

            client_us[name] = await cpu_per_call(read, n)
        result.figures.append(_figure("a county's report read, CPU per call", client_us, "resp", "redis-py"))

        app = create_app(settings)
        token = next(iter(settings.regulator_token_map()))
        paths = [f"/v1/coverage/{c}" for c in codes]
        route_us: dict[str, float] = {}
        async with app.router.lifespan_context(app):
            fast_path = app.state.fast_path

            async def get(i: int) -> int:
                status = await asgi_get(app, paths[i % len(paths)], token)
                assert status == 200, status
                return status

            for name, installed in (("FastAPI route", None), ("fast path", fast_path)) * 2:  # the second pass counts
                ctx.progress(f"components: GET through the {name}", 0, 1)
                app.state.fast_path = installed
                route_us[name] = await cpu_per_call(get, n)
        ctx.progress("components: uvicorn's own share of a request", 0, 1)
        share = await server_share(stack.workdir, 2.0 if config.quick else 10.0)
        result.figures.append(
            _figure(
                "GET /v1/coverage/{county} in the app, CPU per request", route_us, "fast path", "FastAPI route", share
            )
        )
    finally:
        await fast.close()
        await redis.aclose()
    result.samples = {
        "client_cpu_us": client_us,
        "route_cpu_us": route_us,
        "server_share_cpu_us": share,
        "calls": n,
        "concurrency": CONCURRENCY,
    }
    return result


def _figure(
    name: str, measured: dict[str, float], hand_made: str, library: str, server_us: float | None = None
) -> Figure:
    """Reported, not judged: the note says whether the library, with the server's share, stays within the budget
    (then the hand-made part goes)."""
    mine, theirs = measured[hand_made], measured[library]
    share = (
        f"; uvicorn's own share {server_us:.0f} µs"
        if server_us is not None
        else "; uvicorn's share not measured (no wrk)"
    )
    needed = theirs + (server_us or 0.0) > BUDGET_US
    return Figure(
        name,
        mine,
        "µs",
        f"kept only if {library} (+ server) > {BUDGET_US:.0f} µs",
        met=None,
        baseline=theirs,
        baseline_name=library,
        note=f"{hand_made} {mine:.0f} µs against {library} {theirs:.0f} µs ({theirs / mine:.2f}×){share}; budget "
        f"{BUDGET_US:.0f} µs = one core at 5,000 requests/s; "
        + (
            "the library does not fit: the hand-made part stays"
            if needed
            else "the library fits: drop the hand-made part"
        ),
    )
