"""Waiting for the read model to be on disk: what is not derived from the scan topic (a registry load, a history
snapshot) ends with an RDB save of every master that began after it was written, since the Redis of the read model
logs no writes (no AOF) and a restart restores its last save (docs/operations.md#persistence)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import ResponseError

from lastmile import redis_client

log = logging.getLogger("lastmile.readmodel")

POLL_S: Final = 0.02
# A national read model saves in seconds here; a master that has not saved after this long is reported, not waited on.
SAVE_WITHIN_S: Final = 600.0


class SaveFailed(RuntimeError):
    """A master could not write its snapshot (disk full, permissions: its log says why)."""


async def saved(redis: aioredis.Redis, *, within: float = SAVE_WITHIN_S) -> None:
    """Return once every master holds on disk a snapshot begun after this call: all that was written before the
    call survives a restart. A Redis that refuses BGSAVE (a managed service) is logged and trusted with its own
    persistence."""
    if not redis_client.is_cluster(redis):
        await asyncio.wait_for(_saved(_Node(redis, None)), within)
        return
    cluster: Any = redis
    nodes: list[ClusterNode] = cluster.get_primaries()
    await asyncio.wait_for(asyncio.gather(*(_saved(_Node(redis, n)) for n in nodes)), within)


class _Node:
    """One server, or one master of a cluster (its calls then carry ``target_nodes``)."""

    def __init__(self, redis: aioredis.Redis, node: ClusterNode | None) -> None:
        self.redis: Any = redis  # execute_command and a cluster's target_nodes are untyped in redis-py
        self.name = "redis" if node is None else node.name
        self.route = {} if node is None else {"target_nodes": node}

    async def info(self) -> Mapping[str, Any]:
        info: Mapping[str, Any] = await self.redis.info("persistence", **self.route)
        return info

    async def bgsave(self) -> None:
        await self.redis.execute_command("BGSAVE", "SCHEDULE", **self.route)


async def _saved(node: _Node) -> None:
    info = await node.info()
    # A save already running may have forked before our writes: let it end, then start one of our own.
    while int(info["rdb_bgsave_in_progress"]):
        await asyncio.sleep(POLL_S)
        info = await node.info()
    before = int(info["rdb_saves"])
    try:
        await node.bgsave()
    except ResponseError as exc:
        text = str(exc)
        if "in progress" not in text:  # else a save began since the INFO above, so after our writes: it serves
            if _refused(text):
                log.warning("Redis refuses BGSAVE: trusting its own persistence", extra={"node": node.name})
                return
            raise
    # rdb_saves counts a save when it forks; then it is done once none is in progress.
    while int(info["rdb_saves"]) <= before or int(info["rdb_bgsave_in_progress"]):
        await asyncio.sleep(POLL_S)
        info = await node.info()
    if info.get("rdb_last_bgsave_status") != "ok":
        raise SaveFailed(f"{node.name} could not save its snapshot: its log says why")


def _refused(text: str) -> bool:
    return "unknown command" in text.lower() or text.startswith("NOPERM")
