"""Faults on a Redis Cluster of 3 masters (REDIS_CLUSTER_NODES): the services run on the cluster while events of
both sample provinces (14 and 41, on different masters) flow with repeats; the worker is killed with SIGKILL, the
master holding province 41 is killed and restarted from its last save (the registry load's: all it applied since
is lost and folded again), and then, with the workers stopped, emptied of every slot by a rebalance. In the end the
read model equals the test's own count, as on a single Redis.

A slot moved with its keys while a worker writes could fail a script part-way (its keys are named inside it, not
declared), so a rebalance is done with the workers stopped: docs/operations.md says so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from coverage_service.readmodel.registry_store import load_registry
from lastmile import redis_client
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile.topics import ensure_topics
from lastmile_dev import devstack
from lastmile_dev.devstack import Proc
from tests.support.faultkit import (
    EventMaker,
    Expected,
    Stream,
    assert_exact,
    connected_publisher,
    folded,
    seeded,
    until,
    wait_caught_up,
)
from tests.support.services import SAMPLE, sample_units, sample_villages, service_env, start, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TOKEN = "cluster-carrier-token-0123456789"
UNITS = sorted(sample_units(lambda row: True))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[Proc], list[str]]]:
    procs, nodes = devstack.start_redis_cluster(tmp_path / "cluster")
    try:
        yield procs, nodes
    finally:
        for proc in procs:
            proc.stop()


def holder(nodes: list[str], tag: str) -> int:
    """Which node holds the slot of hash tag ``tag`` (asked of the cluster, not computed)."""
    host, port = nodes[0].rsplit(":", 1)
    with redis.Redis(host=host, port=int(port)) as r:
        for start_slot, end_slot, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if start_slot <= key_slot(tag.encode()) <= end_slot:
                return nodes.index(f"{primary[0].decode()}:{primary[1]}")
    raise AssertionError(f"no node holds the slot of {tag}")


async def test_services_on_a_cluster_survive_kills_a_master_restart_and_a_rebalance(
    settings: Settings, cluster: tuple[list[Proc], list[str]], tmp_path: Path
) -> None:
    rng, seed = seeded("test_services_on_a_cluster_survive_kills_a_master_restart_and_a_rebalance")
    procs, nodes = cluster
    mine = settings.replace(redis_cluster_nodes=",".join(nodes))
    prefix = mine.redis_key_prefix
    assert holder(nodes, "{14}") != holder(nodes, "{41}"), "the two provinces must be on different masters"
    on_cluster = redis_client.connect(mine)
    await load_registry(on_cluster, prefix, read_registry(SAMPLE))
    await ensure_topics(mine)
    expected = Expected(villages=sample_villages(lambda row: True))
    maker = EventMaker(rng, "cl", carriers=("sf", "zto"), units=UNITS)

    # Ingest on the cluster: it checks codes against the cluster's registry index.
    port = devstack.free_port()
    env = service_env(mine, INGEST_PORT=str(port), INGEST_CARRIER_TOKENS=json.dumps({TOKEN: "sf"}))
    ingest = start("ingest", env, tmp_path / "ingest")
    workers: list[Proc] = []
    steps: list[str] = []

    def launch() -> Proc:
        n = len(workers)
        group = f"{mine.consumer_group}-{n}"  # a fresh group each start: see test_worker_kills.py
        workers.append(start("worker", service_env(mine, WORKER_GROUP_ID=group), tmp_path / f"worker-{n}"))
        return workers[-1]

    def logs() -> str:
        return "\n".join(f"--- {p.name} ({p.log_path})\n{p.log_tail(15)}" for p in [ingest, *workers[-2:]])

    try:
        wait_ready([(ingest, f"http://127.0.0.1:{port}")])
        posted = [maker.event() for _ in range(30)]
        for e in posted:
            e["carrier"] = "sf"
        bad = {**maker.event(), "carrier": "sf", "location_code": "419999999999"}
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            accepted = await http.post(f"http://127.0.0.1:{port}/v1/scans", json={"events": posted})
            refused = await http.post(f"http://127.0.0.1:{port}/v1/scans", json={"events": [bad]})
        assert accepted.status_code == 202, accepted.text
        expected.add(posted)
        assert refused.status_code == 422 and "419999999999" in refused.text, refused.text

        publisher = await connected_publisher(mine)
        stream = Stream(publisher, maker, expected, rng, batch=20, pause=0.05)
        flowing = asyncio.create_task(stream.run())
        try:
            worker = launch()
            for _ in range(2):
                await _folding(on_cluster, prefix, logs)
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                worker.kill()
                steps.append(f"worker killed at {await folded(on_cluster, prefix)} folded, {expected.sent} sent")
                worker = launch()
            await _folding(on_cluster, prefix, logs)
            victim = holder(nodes, "{41}")
            procs[victim] = await asyncio.to_thread(
                devstack.restart_cluster_node, procs[victim], nodes[victim], crash=True
            )
            steps.append(f"master {nodes[victim]} killed and restarted at {expected.sent} sent")
            await _folding(on_cluster, prefix, logs)
            worker.stop()
            await asyncio.to_thread(devstack.empty_cluster_node, nodes, nodes[victim])
            moved_to = holder(nodes, "{41}")
            assert moved_to != victim
            steps.append(f"master {nodes[victim]} emptied: province 41 now on {nodes[moved_to]}")
            await on_cluster.aclose()  # its slot map is stale; a new client learns the new one
            on_cluster = redis_client.connect(mine)
            worker = launch()
            await _folding(on_cluster, prefix, logs)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
        finally:
            await stream.finish(flowing)
        assert flowing.exception() is None, flowing.exception()
        await wait_caught_up(on_cluster, mine, expected, within=90, context=logs)
        print("\n".join(steps))
        await assert_exact(on_cluster, prefix, expected, seed, "\n".join(steps) + "\n" + logs())
    finally:
        for p in [ingest, *workers]:
            p.stop()
        await on_cluster.aclose()


async def _folding(redis: aioredis.Redis, prefix: str, logs: Callable[[], str]) -> None:
    """Until the worker folds more than it had."""
    before = await folded(redis, prefix)

    async def more() -> bool:
        return await folded(redis, prefix) > before

    await until(more, within=90, what="the worker folds", context=logs)
