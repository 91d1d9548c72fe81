"""The read model's Redis client, made in one place: the single server of LASTMILE_REDIS_URL, or the Redis Cluster
of LASTMILE_REDIS_CLUSTER_NODES (with LASTMILE_REDIS_URL's user, password and TLS). Callers create it in a lifespan
or a command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from lastmile.settings import Settings

POOL_SIZE: Final = 64
# How long a caller waits for a free pooled connection before the call fails.
POOL_WAIT_S: Final = 5.0

T = TypeVar("T")


def connect(
    settings: Settings, *, decode_responses: bool = True, max_connections: int = POOL_SIZE, **options: Any
) -> aioredis.Redis:
    """A client of the read model, with at most ``max_connections`` connections to each server.

    On one server a caller past the limit waits for a connection (redis-py's default pool would fail with
    "Too many connections"); a cluster client has no waiting pool, so callers that fan out bound their calls
    with :class:`Bounded`. A cluster client answers the commands the read model uses with the same signatures,
    though it is no subclass of ``Redis``; where the two differ (scripts in a pipeline, INFO, SCAN) callers ask
    :func:`is_cluster`."""
    if not settings.redis_cluster:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            decode_responses=decode_responses,
            max_connections=max_connections,
            timeout=POOL_WAIT_S,
            **options,
        )
        return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
    url = urlsplit(settings.redis_url)
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in settings.redis_cluster],
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password else None,
        ssl=url.scheme == "rediss",
        decode_responses=decode_responses,
        max_connections=max_connections,
        **options,
    )
    return cast(aioredis.Redis, client)


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


class Bounded:
    """Wraps calls so that, all together, at most ``limit`` are in flight: on a cluster, no more than any one
    node's connections."""

    def __init__(self, limit: int = POOL_SIZE) -> None:
        self._gate = asyncio.Semaphore(limit)

    def __call__(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        async def run(*args: Any, **kwargs: Any) -> T:
            async with self._gate:
                return await call(*args, **kwargs)

        return run
