"""Fault: the worker is killed with SIGKILL at random points while events with repeats flow, and restarted.

Events for the villages of 盂县 go through the ingest Publisher (one record per partition per request, acked by the
broker) in a steady stream, with earlier events re-sent in later requests and whole requests retried. After each
(re)start, once the worker is folding again, it is killed after a random delay (no flush, no commit, no goodbye to
the group) and a new one is started. ``FAULT_KILL_POINTS`` kills (default 5); ``FAULT_SEED`` replays a run's
random choices (events, repeats, delays), and the seed is printed. In the end the whole read model (every region,
village and lapse index) and the stats equal the test's own count: events applied = distinct events, duplicates =
re-sent events.

Each restart joins under a consumer group name of its own. On the embedded broker a member that died without
leaving keeps a same-group rejoin waiting some 13 s (its session timeout, then a rebalance), which would make
five kill points cost over a minute; the exactness under test rests on the offsets stored in Redis with the
effects, which the worker seeks to on every assignment whatever Kafka has committed for its group. A same-group
takeover after SIGKILL is what test_two_workers.py (and tests/e2e/test_pipeline.py) do.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from coverage_service.readmodel.registry_store import load_registry
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile.topics import ensure_topics
from lastmile_dev.devstack import Proc
from tests.support.faultkit import (
    EventMaker,
    Expected,
    Stream,
    assert_exact,
    connected_publisher,
    folded,
    kill_points,
    seeded,
    until,
    wait_caught_up,
)
from tests.support.services import SAMPLE, service_env, start

pytestmark = [pytest.mark.integration, pytest.mark.faults]


async def test_worker_killed_at_random_points_ends_exact(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    rng, seed = seeded("test_worker_killed_at_random_points_ends_exact")
    points = kill_points()
    prefix = settings.redis_key_prefix
    await load_registry(redis, prefix, read_registry(SAMPLE))
    await ensure_topics(settings)
    publisher = await connected_publisher(settings)
    expected = Expected()
    stream = Stream(publisher, EventMaker(rng, "k", carriers=("sf", "zto")), expected, rng, batch=20, pause=0.05)
    workers: list[Proc] = []

    def launch(n: int) -> Proc:
        # Small apply calls: a taken batch is folded in several, so kills also land between the calls of one.
        env = service_env(
            settings, WORKER_GROUP_ID=f"{settings.consumer_group}-{n}", WORKER_BATCH_MAX="32", WORKER_APPLY_EVENTS="15"
        )
        proc: Proc = start("worker", env, tmp_path / f"worker-{n}")
        workers.append(proc)
        return proc

    def logs() -> str:
        return "\n".join(f"--- worker {i} ({w.log_path})\n{w.log_tail(15)}" for i, w in enumerate(workers[-2:]))

    flowing = asyncio.create_task(stream.run())
    try:
        worker = launch(0)
        kills: list[str] = []
        for n in range(points):
            before, restarted = await folded(redis, prefix), time.monotonic()
            # Mid-stream: the worker is folding (it moved past what was folded at its start), then a random delay.
            await until(
                lambda b=before: _more(redis, prefix, b),  # type: ignore[misc]
                within=60,
                what=f"worker {n} folds",
                context=logs,
            )
            assert not flowing.done(), flowing.exception()
            resumed = time.monotonic() - restarted
            delay = rng.uniform(0.0, 1.0)
            await asyncio.sleep(delay)
            at = await folded(redis, prefix)
            assert worker.alive(), logs()
            worker.kill()  # SIGKILL
            kills.append(
                f"kill {n + 1}: folding {resumed:.1f}s after the start, killed {delay:.2f}s later; "
                f"{at} folded, {expected.sent} sent"
            )
            worker = launch(n + 1)
        print("\n".join(kills))
        await asyncio.sleep(rng.uniform(0.2, 1.0))  # the last worker folds live for a while
    finally:
        await stream.finish(flowing)
    try:
        assert flowing.exception() is None, flowing.exception()
        started = time.monotonic()
        await wait_caught_up(redis, settings, expected, within=60, context=logs)
        print(f"caught up {time.monotonic() - started:.1f}s after the stream stopped; {expected.sent} sent")
        assert worker.alive(), logs()
        await assert_exact(redis, prefix, expected, seed, "\n".join(kills) + "\n" + logs())
    finally:
        for w in workers:
            w.stop()


async def _more(redis: aioredis.Redis, prefix: str, before: int) -> bool:
    return await folded(redis, prefix) > before
