"""Scenario: many live streams open at once while events flow, and the coverage API's other requests beside them.

Probes reach new villages of one county for a carrier the load never uses; the streams watch that carrier's figures
of the nation, the province and the county, which only probes change. The harness sees each change land in Redis
and times how long every stream takes to deliver it (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

import aiohttp
import orjson
import redis.asyncio as aioredis

from lastmile import names
from lastmile_dev.bench import api_load, openloop, posting, throughput
from lastmile_dev.bench.core import Context, Figure, Result, percentile
from lastmile_dev.bench.exact import check_exact, wait_applied
from lastmile_dev.bench.generator import PROBE_CARRIER
from lastmile_dev.bench.registry_load import registry_of

STREAMS: Final = 1000
STREAMS_QUICK: Final = 30
TARGET_P99_MS: Final = 1000.0
PROBES: Final = 20
PROBES_QUICK: Final = 3
PROBE_EVERY_S: Final = 1.5
REDIS_POLL_S: Final = 0.005
CHANGE_TIMEOUT_S: Final = 20.0
DELIVERY_GRACE_S: Final = 5.0  # after the last change, how long the streams get to deliver it


class Watch:
    """One open stream: when it first received each value of ``villages_reached``."""

    def __init__(self) -> None:
        self.first_seen: dict[int, float] = {}
        self.events = 0

    async def run(self, session: aiohttp.ClientSession, path: str, opened: Callable[[], None]) -> None:
        async with session.get(path) as response:
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {(await response.text())[:300]}")
            opened()
            async for line in response.content:
                if line.startswith(b"data: "):
                    now = time.monotonic()
                    reached = int(orjson.loads(line[6:])["villages_reached"])
                    self.events += 1
                    self.first_seen.setdefault(reached, now)


async def run(ctx: Context) -> Result:
    config, stack = ctx.config, ctx.stack
    gen = throughput.generator_of(ctx)
    assert ctx.registry is not None
    quick = config.quick
    n_streams, n_probes = (STREAMS_QUICK, PROBES_QUICK) if quick else (STREAMS, PROBES)
    prefix = stack.settings.redis_key_prefix
    redis = aioredis.from_url(stack.settings.redis_url, decode_responses=True)
    county, villages = await probe_county(redis, prefix, gen.villages(), n_probes)
    paths = [
        f"/v1/stream?carrier={PROBE_CARRIER}",
        f"/v1/stream/{county[:2]}?carrier={PROBE_CARRIER}",
        f"/v1/stream/{county}?carrier={PROBE_CARRIER}",
    ]
    region_key = names.key(prefix, names.REGION, county)
    field = f"{names.field.VILLAGES_REACHED}{names.field.DIM_SEP}{names.field.CARRIER}{PROBE_CARRIER}"
    rate = throughput.sustained_rate(ctx) or float(config.batch_size)
    interval = config.batch_size / (rate / 2)  # the load: half the sustained rate, as the freshness scenario's
    open_rate = api_load.OPEN_RATE_QUICK if quick else api_load.OPEN_RATE
    api_paths = api_load.registry_paths(await registry_of(ctx), api_load.URLS, config.seed)

    watches = [Watch() for _ in range(n_streams)]
    changes: dict[int, float] = {}
    missed_changes = 0
    headers = {"Authorization": f"Bearer {stack.regulator_token}"}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    try:
        await wait_applied(redis, prefix, gen.events_distinct)
        async with (
            aiohttp.ClientSession(stack.coverage_url, connector=connector, timeout=timeout, headers=headers) as sse,
            posting.client() as http,
            contextlib.AsyncExitStack() as tasks,
        ):
            poster = posting.Poster(stack, http)
            opened = 0

            def one_open() -> None:
                nonlocal opened
                opened += 1

            running = [asyncio.create_task(w.run(sse, paths[i % len(paths)], one_open)) for i, w in enumerate(watches)]
            tasks.callback(_cancel, running)
            await _until(lambda: opened == n_streams or any(t.done() for t in running), 60, "the streams to open")
            _raise_any(running)
            ctx.progress("streams: open", n_streams, n_streams)

            load = asyncio.create_task(_load(ctx, poster, interval))
            duration = n_probes * PROBE_EVERY_S + DELIVERY_GRACE_S
            beside = asyncio.create_task(
                openloop.open_loop(stack.coverage_url, stack.regulator_token, api_paths, open_rate, duration)
            )
            for i, village in enumerate(villages):
                ctx.progress("streams: probes", i, len(villages))
                before = int(await redis.hget(region_key, field) or 0)
                await poster.post([gen.probe(PROBE_CARRIER, village)])
                seen = await _changed(redis, region_key, field, before)
                if seen is None:
                    missed_changes += 1
                else:
                    value, at = seen
                    changes[value] = at
                await asyncio.sleep(PROBE_EVERY_S)
            await asyncio.sleep(DELIVERY_GRACE_S)
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
            fixed = await beside
            _raise_any(running)
        await wait_applied(redis, prefix, gen.events_distinct)
        exact = await check_exact(redis, prefix, ctx.registry, gen.expected())
    finally:
        await redis.aclose()

    delays, undelivered = _delays(watches, changes)
    ordered = sorted(delays)
    p99 = percentile(ordered, 99) if ordered else None
    result = Result("streams", exact=exact.ok)
    note = (
        f"{n_streams:,} streams open (the probe carrier's figures of the nation, province {county[:2]} and county "
        f"{county}), {len(changes)} changes, each timed from when Redis held it to each stream's event: "
        f"{len(ordered):,} deliveries, {undelivered} not delivered within {DELIVERY_GRACE_S:g} s of the last, "
        f"{missed_changes} probes whose change did not show; load {rate / 2:,.0f} events/s beside"
    )
    result.figures = [
        Figure(
            "live streams: change → delivered, p99",
            p99,
            "ms",
            f"≤ {TARGET_P99_MS:,.0f} ms",
            p99 is not None and p99 <= TARGET_P99_MS and undelivered == 0 and missed_changes == 0,
            note=note,
        ),
        Figure("live streams: change → delivered, p50", percentile(ordered, 50) if ordered else None, "ms", "", None),
        *[
            Figure(f.name.replace("coverage API", "beside the streams:"), f.value, f.unit, f.target, f.met, note=f.note)
            for f in api_load.open_loop_figures(fixed)
        ],
        Figure("figures exact", 1.0 if result.exact else 0.0, "", "exact", result.exact),
    ]
    result.samples = {
        "streams": n_streams,
        "paths": paths,
        "changes": len(changes),
        "deliveries": len(ordered),
        "undelivered": undelivered,
        "missed_changes": missed_changes,
        "delivery_ms": {f"p{p:g}": percentile(ordered, p) for p in (50, 90, 99, 99.9)} if ordered else {},
        "events_per_stream": dict(Counter(w.events for w in watches)),
        "open_loop": {"rate": fixed.rate, "completed": fixed.completed, "errors": fixed.errors},
        "exactness": exact.as_sample(),
    }
    return result


async def probe_county(redis: aioredis.Redis, prefix: str, villages: list[str], wanted: int) -> tuple[str, list[str]]:
    """The largest county with villages the probe carrier has not reached (earlier scenarios probe too), and up to
    ``wanted`` of those villages: each probe then adds one to the carrier's reached count."""
    by_county: dict[str, list[str]] = {}
    for village in villages:
        by_county.setdefault(village[:6], []).append(village)
    flag = f"{names.field.REACHED}{names.field.DIM_SEP}{names.field.CARRIER}{PROBE_CARRIER}"
    for county in sorted(by_county, key=lambda c: -len(by_county[c])):
        async with redis.pipeline(transaction=False) as pipe:
            for village in by_county[county]:
                pipe.hget(names.key(prefix, names.LOCATION, village), flag)
            flags = await pipe.execute()
        fresh = [v for v, f in zip(by_county[county], flags, strict=True) if not f or f == "0"]
        if fresh:
            return county, fresh[:wanted]
    raise RuntimeError(f"every village has been reached by {PROBE_CARRIER}: no change left to probe")


def _delays(watches: list[Watch], changes: dict[int, float]) -> tuple[list[float], int]:
    """Per stream and change, ms from the change landing in Redis to the stream's first event showing it (or a
    later value); and how many such events never came."""
    delays: list[float] = []
    undelivered = 0
    for watch in watches:
        seen = sorted(watch.first_seen.items())
        for value, at in changes.items():
            got = min((t for v, t in seen if v >= value), default=None)
            if got is None:
                undelivered += 1
            else:
                delays.append(max(0.0, got - at) * 1000)
    return delays, undelivered


async def _changed(redis: aioredis.Redis, key: str, field: str, before: int) -> tuple[int, float] | None:
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while time.monotonic() < deadline:
        value = int(await redis.hget(key, field) or 0)
        if value > before:
            return value, time.monotonic()
        await asyncio.sleep(REDIS_POLL_S)
    return None


async def _load(ctx: Context, poster: posting.Poster, interval: float) -> None:
    """Batches at a steady pace until cancelled."""
    gen, size = throughput.generator_of(ctx), ctx.config.batch_size
    pending: set[asyncio.Task[float]] = set()
    next_at = time.monotonic()
    try:
        while True:
            task = asyncio.create_task(poster.post(gen.next_batch(size)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        if pending:
            await asyncio.gather(*pending)  # what was generated is posted: the exactness check counts it


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _raise_any(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError("a live stream failed") from task.exception()


def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
