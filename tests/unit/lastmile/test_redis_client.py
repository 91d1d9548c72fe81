"""The read model's client: one server by default, a cluster from REDIS_CLUSTER_NODES with REDIS_URL's credentials.

No server is contacted: redis-py's clients connect on first use."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from lastmile import redis_client
from lastmile.settings import Settings


async def test_without_cluster_nodes_the_client_is_the_server_of_redis_url() -> None:
    client = redis_client.connect(Settings.from_env({"REDIS_URL": "redis://h1:6390/2"}))
    try:
        assert isinstance(client, aioredis.Redis) and not redis_client.is_cluster(client)
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h1", 6390, 2)
        # past the limit a caller waits for a connection instead of failing with "Too many connections"
        assert isinstance(client.connection_pool, aioredis.BlockingConnectionPool)
        assert client.connection_pool.max_connections == redis_client.POOL_SIZE
    finally:
        await client.aclose()


async def test_cluster_nodes_give_a_cluster_client_with_the_urls_credentials() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "rediss://ops:s%40cret@ignored:1/0", "REDIS_CLUSTER_NODES": "n1:7001, n2:7002,n3:7003"}
    )
    assert settings.redis_cluster == [("n1", 7001), ("n2", 7002), ("n3", 7003)]
    client = redis_client.connect(settings)
    try:
        assert isinstance(client, RedisCluster) and redis_client.is_cluster(client)
        startup = client.nodes_manager.startup_nodes
        assert sorted(startup) == ["n1:7001", "n2:7002", "n3:7003"]
        kwargs = client.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("ops", "s@cret")
        assert kwargs["connection_class"].__name__ == "SSLConnection"
    finally:
        await client.aclose()


async def test_bounded_calls_never_have_more_than_the_limit_in_flight() -> None:
    in_flight = peak = 0

    async def call(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return i

    bounded = redis_client.Bounded(limit=5)
    one, other = bounded(call), bounded(call)  # one limit for every call wrapped by the same Bounded
    assert await asyncio.gather(*(one(i) for i in range(25)), *(other(i) for i in range(25, 50))) == list(range(50))
    assert peak == 5
