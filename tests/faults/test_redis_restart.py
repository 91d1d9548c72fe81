"""Fault: Redis restarts under a running worker, gracefully and with SIGKILL; then it loses everything.

The test runs its own redis-server (AOF, appendfsync everysec) on a free port, not the session one, since it is
stopped and killed. While events with repeats flow through the ingest Publisher, Redis is restarted with SIGTERM
(it writes its AOF and exits) and then killed with SIGKILL, each time on the same port and data directory. The
worker gets connection errors meanwhile; it must retry (never crash, never drop a batch) and end exact: the whole
read model equals the test's own count. A SIGKILL can lose what the AOF had not written yet; the worker's
position is then ahead of the offsets Redis kept with the effects, and exactness rests on its resuming from those.

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


class OwnRedis:
    """A redis-server of this test's own, restarted on the same port and data directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = devstack.free_port()
        self.proc, self.url = devstack.start_redis(workdir, self.port)

    def aof_tail(self) -> tuple[Path, int]:
        """The AOF file Redis appends to now, and its size."""
        incr = sorted((self.workdir / "appendonlydir").glob("*.incr.aof"), key=lambda p: p.stat().st_mtime)[-1]
        return incr, incr.stat().st_size

    def restart(self, how: str, lose_after: tuple[Path, int] | None = None) -> None:
        if how == "term":
            self.proc.stop()
        else:
            self.proc.kill()
        if lose_after is not None:  # a machine crash: what the AOF got after this point never reached the disk
            path, size = lose_after
            with open(path, "r+b") as f:
                f.truncate(size)
        self.proc, _ = devstack.start_redis(self.workdir, self.port)

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
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

    flowing = asyncio.create_task(stream.run())
    try:
        for how in ("term", "kill", "crash"):
            before = await until(lambda: _folded_some(redis, prefix), within=60, what="worker folds", context=logs)
            await until(
                lambda b=before: _more(redis, prefix, b),  # type: ignore[misc]
                within=60,
                what="worker folds after the restart",
                context=logs,
            )
            tail = own_redis.aof_tail()
            mark = await folded(redis, prefix)
            past = mark + rng.randint(1, 60)
            # Hurt Redis only once the worker has applied a random amount past the AOF point, not after a fixed
            # sleep: on a loaded CI machine the worker can stall for a second, and a crash that loses nothing
            # would prove nothing.
            await until(
                lambda p=past: _more(redis, prefix, p),  # type: ignore[misc]
                within=60,
                what="worker folds past the AOF point",
                context=logs,
            )
            assert not flowing.done(), flowing.exception()
            lost = await folded(redis, prefix) - mark
            restarts.append(f"redis {how} at {expected.sent} sent; {lost} events folded after the AOF point")
            own_redis.restart(how, tail if how == "crash" else None)
            # The crash means something only if it lost applied batches (written to the AOF after that point).
            assert how != "crash" or lost > 0, logs()
            assert worker.alive(), logs()
        await until(lambda: _folded_some(redis, prefix), within=60, what="worker folds again", context=logs)
    finally:
        await stream.finish(flowing)
    try:
        assert flowing.exception() is None, flowing.exception()
        await wait_caught_up(redis, mine, expected, within=60, context=logs)
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
