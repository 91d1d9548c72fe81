"""Fault: Redis restarts under a running worker, gracefully and with SIGKILL; then it loses everything.

Each test runs its own redis-server on a free port, not the session one, since it is stopped and killed: as the
read model's (snapshots, no AOF) and as an operator may run it instead (AOF, appendfsync everysec). While events
with repeats flow, Redis is restarted with SIGTERM (it saves and exits) and then crashed: killed with SIGKILL after
the worker applied a random amount past the last point on disk (a save; the AOF's size, cut back to it after the
kill), so the restart loses applied batches. Then a crash with no events flowing: no apply call meets the loss,
and the worker must find it itself. The worker must retry (never crash, never drop a batch) and end exact: the
whole read model equals the test's own count.

Then Redis loses all its data (FLUSHALL) and, with the worker stopped, ``lastmile rebuild --wipe --registry``
folds the topic from its beginning into the same figures. (tests/integration/worker/test_rebuild.py checks the rebuild
in depth; this is the short version after the faults above.)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from coverage_service.readmodel import durable
from coverage_service.readmodel.registry_store import load_registry
from lastmile import names
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile.topics import ensure_topics
from lastmile_dev import devstack
from tests.support.faultkit import (
    EventMaker,
    Expected,
    Stream,
    assert_exact,
    connected_publisher,
    folded,
    seeded,
    stats,
    until,
    wait_caught_up,
)
from tests.support.services import SAMPLE, service_env, start

pytestmark = [pytest.mark.integration, pytest.mark.faults]

REFOLDED = "folding them again from the topic"  # what the worker logs when it finds applied records lost


class OwnRedis:
    """A redis-server of this test's own, restarted on the same port and data directory."""

    def __init__(self, workdir: Path, aof: bool) -> None:
        self.workdir = workdir
        self.aof = aof
        self.port = devstack.free_port()
        self.proc, self.url = devstack.start_redis(workdir, self.port, aof=aof)
        self._kept: tuple[Path, int] | None = None

    async def on_disk(self, redis: aioredis.Redis) -> None:
        """Mark what is applied now as what a crash keeps: a save (as the schedule makes), or the AOF's size
        (what an fsync had written; the rest is cut off after the kill)."""
        if self.aof:
            incr = sorted((self.workdir / "appendonlydir").glob("*.incr.aof"), key=lambda p: p.stat().st_mtime)[-1]
            self._kept = incr, incr.stat().st_size
        else:
            await durable.saved(redis)

    def restart(self, how: str) -> None:
        if how == "term":
            self.proc.stop()
        else:
            self.proc.kill()
            if self._kept is not None:  # a machine crash: what the AOF got after this point never reached the disk
                path, size = self._kept
                with open(path, "r+b") as f:
                    f.truncate(size)
        self._kept = None
        self.proc, _ = devstack.start_redis(self.workdir, self.port, aof=self.aof)

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture(params=["snapshots", "aof"])
async def own_redis(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis", aof=request.param == "aof")
    try:
        yield server
    finally:
        server.stop()


async def test_redis_restarts_and_a_wipe_under_the_worker_end_exact(
    settings: Settings, own_redis: OwnRedis, tmp_path: Path
) -> None:
    rng, seed = seeded("test_redis_restarts_and_a_wipe_under_the_worker_end_exact")
    mine = settings.replace(redis_url=own_redis.url)
    prefix = mine.redis_key_prefix
    redis = aioredis.from_url(own_redis.url, decode_responses=True)
    await load_registry(redis, prefix, read_registry(SAMPLE))
    await ensure_topics(mine)
    publisher = await connected_publisher(mine)
    expected = Expected()
    stream = Stream(publisher, EventMaker(rng, "rr", carriers=("sf", "yto")), expected, rng, batch=20, pause=0.05)
    worker = start("worker", service_env(mine, WORKER_BATCH_MAX="32"), tmp_path)
    restarts: list[str] = []

    def logs() -> str:
        return "\n".join([*restarts, f"--- worker\n{worker.log_tail(20)}", f"--- redis\n{own_redis.proc.log_tail(5)}"])

    async def lose_some() -> int:
        """Mark a point on disk once the worker folds, and return how much it applied past it, a random amount:
        on a loaded CI machine the worker can stall for a second, and a crash that loses nothing proves nothing."""
        await until(lambda: _folded_some(redis, prefix), within=60, what="worker folds", context=logs)
        await own_redis.on_disk(redis)
        mark = await folded(redis, prefix)
        past = mark + rng.randint(1, 60)
        await until(
            lambda: _more(redis, prefix, past), within=60, what="worker folds past the point on disk", context=logs
        )
        return await folded(redis, prefix) - mark

    flowing = asyncio.create_task(stream.run())
    try:
        for how in ("term", "crash"):
            before = await until(lambda: _folded_some(redis, prefix), within=60, what="worker folds", context=logs)
            await until(
                lambda b=before: _more(redis, prefix, b),  # type: ignore[misc]
                within=60,
                what="worker folds after the restart",
                context=logs,
            )
            lost = await lose_some() if how == "crash" else 0
            assert not flowing.done(), flowing.exception()
            restarts.append(f"redis {how} at {expected.sent} sent; {lost} events folded past the point on disk")
            own_redis.restart(how)
            assert worker.alive(), logs()
        await until(lambda: _folded_some(redis, prefix), within=60, what="worker folds again", context=logs)
        lost = await lose_some()
    finally:
        await stream.finish(flowing)
    try:
        assert flowing.exception() is None, flowing.exception()
        await wait_caught_up(redis, mine, expected, within=60, context=logs)
        # Nothing flows now: after this crash no apply call meets the loss, the worker's own check must.
        found = worker.log_path.read_text(errors="replace").count(REFOLDED)
        restarts.append(f"redis crash with nothing flowing; {lost} events folded past the point on disk")
        own_redis.restart("crash")
        await wait_caught_up(redis, mine, expected, within=60, context=logs)
        assert worker.log_path.read_text(errors="replace").count(REFOLDED) > found, logs()
        assert worker.alive(), logs()
        assert "retrying after error" in worker.log_path.read_text(errors="replace")  # it did meet the outages
        await assert_exact(redis, prefix, expected, seed, logs())
    finally:
        worker.stop()

    # Redis loses everything; the worker is stopped; the rebuild folds the topic into the same figures.
    try:
        await redis.flushall()
        rebuilt = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "lastmile.cli", "rebuild", "--wipe", "--registry", str(SAMPLE), "--no-progress"],
            env=service_env(mine),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        await assert_exact(redis, prefix, expected, seed, rebuilt.stdout)
    finally:
        await redis.aclose()


@pytest.mark.parametrize("own_redis", ["snapshots"], indirect=True)
async def test_redis_wiped_under_a_running_worker_waits_for_the_registry_then_refolds_exact(
    settings: Settings, own_redis: OwnRedis, tmp_path: Path
) -> None:
    """Redis loses everything (FLUSHALL) while the worker runs and events flow. With no registry the worker must
    not fold (every event would look like an unknown location and be lost); it waits. Once the registry is
    loaded again it finds every partition's offset gone and folds each topic partition from its beginning."""
    rng, seed = seeded("test_redis_wiped_under_a_running_worker_waits_for_the_registry_then_refolds_exact")
    mine = settings.replace(redis_url=own_redis.url)
    prefix = mine.redis_key_prefix
    redis = aioredis.from_url(own_redis.url, decode_responses=True)
    registry = read_registry(SAMPLE)
    await load_registry(redis, prefix, registry)
    await ensure_topics(mine)
    publisher = await connected_publisher(mine)
    expected = Expected()
    stream = Stream(publisher, EventMaker(rng, "wipe", carriers=("sf", "yto")), expected, rng, batch=20, pause=0.05)
    worker = start("worker", service_env(mine, WORKER_BATCH_MAX="32"), tmp_path)

    def logs() -> str:
        return f"--- worker\n{worker.log_tail(20)}"

    flowing = asyncio.create_task(stream.run())
    try:
        await until(lambda: _more(redis, prefix, 200), within=60, what="worker folds", context=logs)
        await redis.flushall()
        wiped_at = expected.sent
        await until(lambda: _true(expected.sent > wiped_at + 200), within=30, what="more events flow")
        await until(
            lambda: _true("RegistryMissing" in worker.log_path.read_text(errors="replace")),
            within=30,
            what="the worker meets the missing registry",
            context=logs,
        )
        # Nothing is folded while there is no registry: no stats, no offsets, no dead letters.
        for written in (names.STATS, names.OFFSETS, names.REGION):
            assert [k async for k in redis.scan_iter(match=names.pattern(prefix, written))] == [], written
        await load_registry(redis, prefix, registry)
        await until(lambda: _more(redis, prefix, 0), within=60, what="worker folds after the load", context=logs)
    finally:
        await stream.finish(flowing)
    try:
        assert flowing.exception() is None, flowing.exception()
        await wait_caught_up(redis, mine, expected, within=90, context=logs)
        assert worker.alive(), logs()
        await assert_exact(redis, prefix, expected, seed, logs())
        assert (await stats(redis, prefix)).get(names.stat.DEAD_LETTERS, 0) == 0
    finally:
        worker.stop()
        await redis.aclose()


async def _true(value: bool) -> bool:
    return value


async def _folded_some(redis: aioredis.Redis, prefix: str) -> int:
    return await folded(redis, prefix)


async def _more(redis: aioredis.Redis, prefix: str, before: int) -> bool:
    return await folded(redis, prefix) > before
