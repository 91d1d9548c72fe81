"""Fault: two workers share the scan topic in one consumer group; one is killed with SIGKILL mid-stream.

Both are started in the same group and events with repeats flow through the ingest Publisher until each worker
has partitions and has applied some (its heartbeat in Redis carries its own totals). Then one is killed (no leave
from the group); the other must take its partitions over once the dead member's session expires, resume them
from the offsets stored in Redis, and fold the rest, while more events flow. In the end the whole read model
equals the test's own count. ``FAULT_SEED`` replays a run's random choices.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from coverage_service.readmodel.registry_store import load_registry
from lastmile import names
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
    seeded,
    until,
    wait_caught_up,
)
from tests.support.services import SAMPLE, service_env, start

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RESUMING = re.compile(r"resuming from the read model\s+positions=(\{[^}]*\})")


async def applied_by(redis: aioredis.Redis, prefix: str, worker: Proc) -> int:
    """What this worker process has applied, from its own heartbeat in Redis."""
    beat = await redis.get(names.key(prefix, names.WORKER_HEARTBEAT, f"{socket.gethostname()}:{worker.pid}"))
    return 0 if beat is None else int(orjson.loads(beat)["events_applied"])


def partitions_taken(worker: Proc) -> list[str]:
    """The partitions of the worker's latest assignment, from its log."""
    found = RESUMING.findall(worker.log_path.read_text(errors="replace"))
    return sorted(re.findall(r"'(\d+)'", found[-1])) if found else []


async def test_the_surviving_worker_takes_over_a_killed_ones_partitions_exactly(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    rng, seed = seeded("test_the_surviving_worker_takes_over_a_killed_ones_partitions_exactly")
    prefix = settings.redis_key_prefix
    await load_registry(redis, prefix, read_registry(SAMPLE))
    await ensure_topics(settings)
    publisher = await connected_publisher(settings)
    expected = Expected()
    stream = Stream(publisher, EventMaker(rng, "two", carriers=("sf", "ems")), expected, rng, batch=20, pause=0.05)
    env = service_env(settings, WORKER_BATCH_MAX="32")
    a = start("worker", env, tmp_path / "a")
    b = start("worker", env, tmp_path / "b")

    def logs() -> str:
        return "\n".join(f"--- worker {w.log_path}\n{w.log_tail(15)}" for w in (a, b))

    flowing = asyncio.create_task(stream.run())
    try:

        async def both_folding() -> bool:
            shares = [partitions_taken(w) for w in (a, b)]
            split = all(shares) and sorted(shares[0] + shares[1]) == ["0", "1", "2", "3"]
            return split and min([await applied_by(redis, prefix, w) for w in (a, b)]) > 0

        await until(both_folding, within=60, what="both workers have partitions and applied some", context=logs)
        assert not flowing.done(), flowing.exception()
        taken = partitions_taken(a)
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        a.kill()  # SIGKILL: its partitions stay with it until its session expires
        print(f"killed worker a holding partitions {taken}; {expected.sent} sent")

        await until(
            lambda: _true(partitions_taken(b) == ["0", "1", "2", "3"]),
            within=60,
            what="worker b takes over every partition",
            context=logs,
        )
        sent_at_takeover = expected.sent
        # More events for every partition, folded by b alone.
        await until(
            lambda: _true(expected.sent >= sent_at_takeover + 400), within=30, what="more events sent", context=logs
        )
    finally:
        await stream.finish(flowing)
    try:
        assert flowing.exception() is None, flowing.exception()
        await wait_caught_up(redis, settings, expected, within=60, context=logs)
        assert b.alive(), logs()
        await assert_exact(redis, prefix, expected, seed, logs())
    finally:
        a.stop()
        b.stop()


async def _true(value: bool) -> bool:
    return value
