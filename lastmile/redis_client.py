"""The read model's Redis client, made in one place: the single server of REDIS_URL, or the Redis Cluster of
REDIS_CLUSTER_NODES (with REDIS_URL's user, password and TLS). Callers create it in a lifespan or a command."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from lastmile.settings import Settings


def connect(settings: Settings, *, decode_responses: bool = True, **options: Any) -> aioredis.Redis:
    """A client of the read model. A cluster client answers the commands the read model uses with the same
    signatures, though it is no subclass of ``Redis``; where the two differ (scripts in a pipeline, INFO, SCAN)
    callers ask :func:`is_cluster`."""
    if not settings.redis_cluster:
        return aioredis.from_url(settings.redis_url, decode_responses=decode_responses, **options)
    url = urlsplit(settings.redis_url)
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in settings.redis_cluster],
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password else None,
        ssl=url.scheme == "rediss",
        decode_responses=decode_responses,
        **options,
    )
    return cast(aioredis.Redis, client)


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)
