"""Scenario: freshness, the time from the 202 answer until the event shows in the coverage API, under load.

A regulator cares how stale a figure can be while carriers are busy, so probes go out under a steady load and are
read back through the path a dashboard uses, the figures cache included (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any, Final

import httpx
import redis.asyncio as aioredis

from lastmile_dev.bench import posting, throughput
from lastmile_dev.bench.core import Context, Figure, Result, percentile
from lastmile_dev.bench.exact import check_exact, wait_applied
from lastmile_dev.bench.generator import PROBE_CARRIER

TARGET_P99_MS: Final = 2000.0
PROBE_INTERVAL_SECONDS: Final = 0.25
POLL_SECONDS: Final = 0.02
PROBE_TIMEOUT_SECONDS: Final = 30.0


async def run(ctx: Context) -> Result:
    config, stack = ctx.config, ctx.stack
    gen = throughput.generator_of(ctx)
    assert ctx.registry is not None
    rate = throughput.sustained_rate(ctx)
    if rate is None:  # freshness is measured at half the sustained rate: measure that first
        ctx.results["throughput"] = await throughput.run(ctx)
        rate = throughput.sustained_rate(ctx) or float(config.batch_size)
    load_rate = rate / 2
    interval = config.batch_size / load_rate
    villages = gen.villages()
    random.Random(config.seed).shuffle(villages)
    prefix = stack.settings.redis_key_prefix
    redis = aioredis.from_url(stack.settings.redis_url, decode_responses=True)
    try:
        await wait_applied(redis, prefix, gen.events_distinct)
        async with posting.client() as http:
            poster = posting.Poster(stack, http)
            latencies, timeouts, behind, seconds, load_events, answers = await _load_and_probe(
                ctx, poster, http, interval, villages
            )
        t_done, _ = await wait_applied(redis, prefix, gen.events_distinct)
        exact = await check_exact(redis, prefix, ctx.registry, gen.expected())
    finally:
        await redis.aclose()

    ordered = sorted(latencies)
    p50 = percentile(ordered, 50) if ordered else None
    p99 = percentile(ordered, 99) if ordered else None
    achieved = load_events / seconds if seconds else 0.0
    result = Result("freshness", exact=exact.ok and t_done is not None)
    load_note = f"load {achieved:,.0f} events/s asked {load_rate:,.0f} (half of {rate:,.0f})"
    if behind:
        load_note += f"; {behind} batches started late"
    result.figures = [
        Figure(
            "freshness p99, 202 → visible in API",
            p99,
            "ms",
            f"≤ {TARGET_P99_MS:,.0f} ms",
            None if p99 is None else p99 <= TARGET_P99_MS and not timeouts,
            note=f"{len(ordered)} probes over {seconds:.0f} s, {timeouts} not visible within "
            f"{PROBE_TIMEOUT_SECONDS:.0f} s; {load_note}",
        ),
        Figure("freshness p50", p50, "ms", "", None),
        Figure("freshness max", ordered[-1] if ordered else None, "ms", "", None),
        Figure("figures exact", 1.0 if result.exact else 0.0, "", "exact", result.exact),
    ]
    result.samples = {
        "sustained_events_per_s_from_throughput": rate,
        "load_events_per_s_asked": load_rate,
        "load_events_per_s_achieved": achieved,
        "batches_started_late": behind,
        "probe_latency_ms": latencies,
        "probe_timeouts": timeouts,
        "poll_answers_by_status": answers,
        "poll_interval_ms": POLL_SECONDS * 1000,
        "post_latency_ms": throughput._summary([s * 1000 for s in poster.latencies]),
        "exactness": exact.as_sample(),
    }
    return result


async def _load_and_probe(
    ctx: Context, poster: posting.Poster, http: httpx.AsyncClient, interval: float, villages: list[str]
) -> tuple[list[float], int, int, float, int, dict[int, int]]:
    """Run the steady load and the probes: (probe latencies in ms, timeouts, late batches, seconds, load events,
    poll answers by status)."""
    config, stack, gen = ctx.config, ctx.stack, throughput.generator_of(ctx)
    duration = config.freshness_seconds
    slots = asyncio.Semaphore(config.posters * 2)
    tasks: list[asyncio.Task[Any]] = []  # all kept: an error in any of them must surface
    latencies: list[float] = []
    timeouts = 0
    behind = 0
    load_events = 0
    answers: Counter[int] = Counter()  # status codes of the polls: a 5xx under load is worth knowing
    headers = {"Authorization": f"Bearer {stack.regulator_token}"}

    async def post(batch: list[dict[str, Any]]) -> None:
        try:
            await poster.post(batch)
        finally:
            slots.release()

    async def probe(village: str) -> None:
        nonlocal timeouts
        answered = await poster.post([gen.probe(PROBE_CARRIER, village)])
        url = f"{stack.coverage_url}/v1/coverage/{village[:9]}"
        while time.monotonic() - answered < PROBE_TIMEOUT_SECONDS:
            response = await http.get(url, headers=headers, params={"carrier": PROBE_CARRIER})
            seen = time.monotonic()
            answers[response.status_code] += 1
            if response.status_code == 200 and _reached(response.json(), village):
                latencies.append(round((seen - answered) * 1000, 2))
                return
            await asyncio.sleep(POLL_SECONDS)
        timeouts += 1

    def launch(coro: Any) -> None:
        tasks.append(asyncio.create_task(coro))

    started = time.monotonic()
    next_batch, next_probe, probes = started, started + PROBE_INTERVAL_SECONDS / 2, 0
    while (now := time.monotonic()) < started + duration:
        ctx.progress("freshness: seconds of steady load", now - started, duration)
        if now >= next_probe and probes < len(villages):
            launch(probe(villages[probes]))
            probes += 1
            next_probe += PROBE_INTERVAL_SECONDS
        if now >= next_batch:
            if slots.locked():
                behind += 1
            await slots.acquire()
            launch(post(gen.next_batch(config.batch_size)))
            load_events += config.batch_size
            next_batch += interval
        await asyncio.sleep(max(0.0, min(next_batch, next_probe) - time.monotonic()))
    seconds = time.monotonic() - started
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return latencies, timeouts, behind, seconds, load_events, dict(answers)


def _reached(report: dict[str, Any], village: str) -> bool:
    """Whether the township report shows ``village`` reached (in the filter's scope)."""
    return any(c["code"] == village and c["villages_reached"] >= 1 for c in report.get("children", []))
