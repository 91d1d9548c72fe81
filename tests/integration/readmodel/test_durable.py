"""The waited save (durable.saved) on a real redis-server configured as the read model's (snapshots, no AOF), killed
with SIGKILL and restarted on its data directory: what was written before the call survives, what came after
does not (so the save, not a log, kept it), even when a save had begun before the writes; and on a cluster every
master saves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from coverage_service.readmodel import durable
from lastmile_dev import devstack

pytestmark = pytest.mark.integration


class Server:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = devstack.free_port()
        self.proc, self.url = devstack.start_redis(workdir, self.port)

    def crash_and_restart(self) -> None:
        self.proc.kill()
        self.proc, _ = devstack.start_redis(self.workdir, self.port)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "redis")
    try:
        yield s
    finally:
        s.proc.stop()


async def test_what_was_written_before_a_waited_save_survives_a_kill_and_nothing_after_it(server: Server) -> None:
    redis = aioredis.from_url(server.url, decode_responses=True)
    try:
        await redis.set("before", "1")
        await durable.saved(redis, within=30)
        await redis.set("after", "1")
    finally:
        await redis.aclose()
    server.crash_and_restart()
    async with aioredis.from_url(server.url, decode_responses=True) as restarted:
        assert await restarted.get("before") == "1"
        assert await restarted.get("after") is None  # no AOF: only the save kept "before"


async def test_a_save_that_began_before_the_writes_is_waited_out_not_taken_for_one_after_them(server: Server) -> None:
    redis = aioredis.from_url(server.url, decode_responses=True)
    try:
        await redis.mset({f"k{i}": "1" for i in range(5)})
        # Slow every save (0.1 s a key) so that one is still running, forked before the next write.
        await redis.config_set("rdb-key-save-delay", 100_000)
        await redis.bgsave()
        await redis.set("written-during-an-older-save", "1")
        await durable.saved(redis, within=30)
    finally:
        await redis.aclose()
    server.crash_and_restart()
    async with aioredis.from_url(server.url, decode_responses=True) as restarted:
        assert await restarted.get("written-during-an-older-save") == "1"


async def test_every_master_of_a_cluster_saves(redis_cluster_nodes: str) -> None:
    startup = [ClusterNode(h, int(p)) for h, p in (n.rsplit(":", 1) for n in redis_cluster_nodes.split(","))]
    cluster = RedisCluster(startup_nodes=startup, decode_responses=True)
    await cluster.initialize()
    try:
        before = await cluster.info("persistence", target_nodes=RedisCluster.PRIMARIES)
        await durable.saved(cluster)  # type: ignore[arg-type]
        after = await cluster.info("persistence", target_nodes=RedisCluster.PRIMARIES)
        assert len(after) == 3
        for node, info in after.items():
            assert info["rdb_saves"] > before[node]["rdb_saves"], node
            assert info["rdb_last_bgsave_status"] == "ok"
    finally:
        await cluster.aclose()
