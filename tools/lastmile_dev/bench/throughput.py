"""Scenario: end-to-end throughput, from HTTP posts to events applied in Redis, and whether they are exact.

The figure that counts is the *sustained* rate: distinct events applied over the time from the first post until Redis
has applied the last of them, so a backlog left in Kafka is paid for, not hidden (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis

from coverage_service.readmodel import durable
from lastmile_dev.bench import cpu, posting
from lastmile_dev.bench.core import Context, Figure, Result, percentile
from lastmile_dev.bench.exact import applied, check_exact, wait_applied
from lastmile_dev.bench.generator import Generator, Prebuilt

FIGURE: Final = "sustained end-to-end throughput"  # the naive scenario reads this figure by name
TARGET_EVENTS_PER_S: Final = 50_000
TARGET_SECONDS: Final = 60.0
TARGET_REDIS_US_PER_EVENT: Final = 10.0
PLANNED_RATE: Final = 100_000  # events/s the CPU table sizes the machines for
ROLES: Final = ("ingest", "broker", "worker", "redis", "coverage", "harness")
COMMANDS_SHOWN: Final = 8  # Redis commands listed by their µs per event


def sustained_rate(ctx: Context) -> float | None:
    """The sustained events/s of this run's throughput scenario, if it has run."""
    result = ctx.results.get("throughput")
    value = result.samples.get("sustained_events_per_s") if result is not None else None
    return float(value) if value else None


def generator_of(ctx: Context) -> Generator:
    if ctx.generator is None:
        raise RuntimeError("the runner gives every scenario the run's generator (ctx.generator)")
    return ctx.generator


async def run(ctx: Context) -> Result:
    config, stack, gen = ctx.config, ctx.stack, generator_of(ctx)
    assert ctx.registry is not None
    prefix = stack.settings.redis_key_prefix
    redis = aioredis.from_url(stack.settings.redis_url, decode_responses=True)
    try:
        # Start from a settled read model: whatever earlier scenarios posted is applied.
        await wait_applied(redis, prefix, gen.events_distinct)
        start_applied = await applied(redis, prefix)
        start_distinct = gen.events_distinct
        load = _prebuild(ctx)
        meter = cpu.Meter(stack.process_groups, redis)
        await meter.start()
        async with posting.client() as http:
            poster = posting.Poster(stack, http)
            timeline, t_first, t_last = await _post_for(ctx, load, poster, redis, prefix, start_applied)
        target = gen.events_distinct
        ctx.progress("throughput: draining the backlog", 0, target - start_applied)
        t_done, final = await wait_applied(
            redis,
            prefix,
            target,
            progress=lambda n: ctx.progress(
                "throughput: draining the backlog", n - start_applied, target - start_applied
            ),
        )
        # Redis saves the read model every 5 minutes when it changed (docs/operations.md#persistence), about once
        # in a phase of this length: one save is in the phase's CPU, as the schedule would make it.
        saving = time.monotonic()
        await durable.saved(redis)
        save_seconds = time.monotonic() - saving
        usage = await meter.stop()
        exact = await check_exact(redis, prefix, ctx.registry, gen.expected())
    finally:
        await redis.aclose()

    distinct = target - start_distinct
    posting_seconds = t_last - t_first
    sustained = distinct / (t_done - t_first) if t_done is not None else None
    # The once-a-second samples (the last entry is the moment posting ended).
    per_second = [b["applied"] - a["applied"] for a, b in itertools.pairwise(timeline[:-1])]
    while_posting = timeline[-1]["applied"] / posting_seconds if posting_seconds > 0 else None
    result = Result("throughput", exact=exact.ok and t_done is not None)
    note = (
        f"{distinct:,} distinct events ({poster.accepted - distinct:,} re-sends) posted for {posting_seconds:.0f} s "
        f"by {config.posters} posters in batches of {config.batch_size}, then drained; the load was built before "
        f"the phase ({load.built:,} events in {load.build_seconds:.0f} s)"
    )
    if load.made_during:
        note += f", and {load.made_during:,} more made during it when posting outran that"
    if posting_seconds < TARGET_SECONDS:
        note += f"; the target asks for ≥ {TARGET_SECONDS:.0f} s"
    result.figures = [
        Figure(
            FIGURE,
            sustained,
            "events/s",
            f"≥ {TARGET_EVENTS_PER_S:,} events/s",
            sustained is not None and sustained >= TARGET_EVENTS_PER_S and posting_seconds >= TARGET_SECONDS,
            note=note if t_done is not None else "the worker stalled before applying everything",
        ),
        Figure(
            "ingest accepted (202)",
            poster.accepted / posting_seconds if posting_seconds > 0 else None,
            "events/s",
            "",
            None,
            note=f"{poster.requests:,} requests, {poster.retries} retried after 503",
        ),
        Figure(
            "applied in Redis while posting",
            while_posting,
            "events/s",
            "",
            None,
            note=f"per second: median {statistics.median(per_second):,.0f}, best {max(per_second):,}"
            if per_second
            else "",
        ),
        Figure(
            "figures exact",
            1.0 if result.exact else 0.0,
            "",
            "exact",
            result.exact,
            note=_exact_note(exact.as_sample()),
        ),
    ]
    result.figures += _cpu_figures(usage, distinct, save_seconds)
    result.samples = {
        "sustained_events_per_s": sustained,
        "cpu_seconds": usage.seconds,
        "redis_commands_per_event": usage.redis_commands_per_event(distinct),
        "events_distinct": distinct,
        "events_posted": poster.accepted,
        "requests": poster.requests,
        "retries_503": poster.retries,
        "posting_seconds": posting_seconds,
        "load_prebuilt_events": load.built,
        "load_build_seconds": load.build_seconds,
        "load_made_during_phase": load.made_during,
        "drain_seconds": (t_done - t_last) if t_done is not None else None,
        "applied_total": final,
        "post_latency_ms": _summary([s * 1000 for s in poster.latencies]),
        "per_second": timeline,
        "exactness": exact.as_sample(),
    }
    return result


@dataclass
class Load:
    """The phase's batches, built before it starts; what posting took from them, and what it had to make."""

    batches: deque[Prebuilt]
    built: int  # events
    build_seconds: float
    made_during: int = 0  # events generated during the phase, once the pre-built ones ran out


def _prebuild(ctx: Context) -> Load:
    config, gen = ctx.config, generator_of(ctx)
    events = config.max_events or int(config.prebuilt_events_per_s * config.duration_seconds)
    count = -(-events // config.batch_size)
    started = time.monotonic()
    batches: list[Prebuilt] = []
    step = max(1, count // 100)
    for done in range(0, count, step):
        batches += gen.prebuild(min(step, count - done), config.batch_size)
        ctx.progress("throughput: building the load", len(batches), count)
    if config.max_events:  # the last batch is cut to the budget
        over = sum(b.events for b in batches) - config.max_events
        if over > 0:
            gen.unsent(batches[-1:])
            batches[-1:] = gen.prebuild(1, batches[-1].events - over)
    return Load(deque(batches), sum(b.events for b in batches), time.monotonic() - started)


async def _post_for(
    ctx: Context, load: Load, poster: posting.Poster, redis: aioredis.Redis, prefix: str, start_applied: int
) -> tuple[list[dict[str, Any]], float, float]:
    """Post the pre-built load until the duration is used up (or all of it, under ``config.max_events``); sample
    progress each second."""
    config, gen = ctx.config, generator_of(ctx)
    started = time.monotonic()
    deadline = started + config.duration_seconds
    budget = config.max_events or None
    last_answer = started
    timeline: list[dict[str, Any]] = []

    async def post_loop() -> None:
        nonlocal last_answer
        while load.batches if budget else time.monotonic() < deadline:
            if load.batches:
                batch = load.batches.popleft()
                answered = await poster.post_body(batch.carrier, batch.body)
                gen.posted(batch)
            else:
                events = gen.next_batch(config.batch_size)
                load.made_during += len(events)
                answered = await poster.post(events)
            last_answer = max(last_answer, answered)

    async def sample() -> None:
        while True:
            now = time.monotonic()
            done = await applied(redis, prefix) - start_applied
            timeline.append({"t": round(now - started, 3), "applied": done, "accepted": poster.accepted})
            ctx.progress(
                "throughput: seconds posted", min(now - started, config.duration_seconds), config.duration_seconds
            )
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - now)))

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(*(post_loop() for _ in range(config.posters)))
    finally:
        sampler.cancel()
        gen.unsent(load.batches)  # never posted: no later batch may re-send their events
        load.batches.clear()
    # The last sample: what was applied when the last 202 came back.
    done = await applied(redis, prefix) - start_applied
    timeline.append({"t": round(last_answer - started, 3), "applied": done, "accepted": poster.accepted})
    return timeline, started, last_answer


def _cpu_figures(usage: cpu.Usage, events: int, save_seconds: float) -> list[Figure]:
    """Redis's CPU per event against its target, and the table of every role's, with the cores it would need."""
    per_event = usage.per_event_us(events)
    redis_us = per_event.get("redis")
    figures = [
        Figure(
            "Redis CPU per applied event",
            redis_us,
            "µs",
            f"≤ {TARGET_REDIS_US_PER_EVENT:g} µs",
            redis_us is not None and redis_us <= TARGET_REDIS_US_PER_EVENT,
            note="redis-server's own CPU (INFO cpu) from the first post until the last event was applied, and its "
            f"saving children's: one snapshot of the read model after that ({save_seconds:.1f} s)",
        )
    ]
    commands = usage.redis_commands_per_event(events)
    if commands:
        top = list(commands.items())[:COMMANDS_SHOWN]
        figures.append(
            Figure(
                "Redis µs per event in scripts (evalsha)",
                commands.get("evalsha", (0.0, 0.0))[1],
                "µs",
                "reported",
                None,
                note="; ".join(f"{name} {us:.1f} µs ({calls:.2f} calls)" for name, (calls, us) in top)
                + " (INFO commandstats, busiest first; evalsha includes the commands its scripts run)",
            )
        )
    calls, usec = usage.commands.get("evalsha", (0, 0))
    if calls:
        figures.append(
            Figure(
                "Redis held per script call (mean)",
                usec / calls / 1000,
                "ms",
                "reported",
                None,
                note=f"{calls:,} calls, {events / calls:,.0f} events each: a reader arriving meanwhile waits for it "
                "(LASTMILE_WORKER_APPLY_EVENTS bounds a call)",
            )
        )
    for role in ROLES:
        us = per_event.get(role)
        if us is None:
            continue
        cores = us * PLANNED_RATE / 1e6
        figures.append(
            Figure(
                f"CPU per event: {role}",
                us,
                "µs",
                "reported",
                None,
                note=f"{cores:,.1f} cores for {PLANNED_RATE:,} events/s",
            )
        )
    return figures


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 50),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


def _exact_note(sample: dict[str, Any]) -> str:
    if sample["ok"]:
        return f"{sample['figures_checked']:,} figures equal the generator's count"
    return f"{len(sample['mismatches'])} mismatches, e.g. {sample['mismatches'][0]}"
