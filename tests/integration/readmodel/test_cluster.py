"""The write path on a real Redis Cluster of 3 masters (redis-server --cluster-enabled, created by the fixture): the
registry load and the writer's calls each stay in one shard's slot, and the figures come out exact.

A call touching a key another master holds fails there ("non local key"); the sample's provinces 14 and 41 are on
different masters. Expected figures come from a reference kept in this file, as in test_apply_script.py.
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from coverage_service import fold
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.writer import ReadModelWriter
from lastmile import names, scan
from lastmile.registry import BUNDLED, read_registry
from lastmile.topics import partition_for
from tests.support import stored
from tests.support.events import make_event

pytestmark = pytest.mark.integration

SAMPLE = BUNDLED["sample"]


@pytest.fixture
async def cluster(redis_cluster_nodes: str) -> AsyncIterator[RedisCluster]:
    startup = [
        ClusterNode(host, int(port)) for host, port in (n.rsplit(":", 1) for n in redis_cluster_nodes.split(","))
    ]
    client = RedisCluster(startup_nodes=startup, decode_responses=True)
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


def sample_villages() -> dict[str, str]:
    """Village-level code -> kind of the sample registry, by the classification rule (docs/registry.md)."""
    with (Path(SAMPLE) / "villages.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {r["code"]: "village" if r["name"].endswith("村委会") else "other" for r in rows}


def test_the_sample_provinces_are_on_different_masters() -> None:
    """What makes a cross-shard call fail below: 14 and 41 hash to slots of different masters (even ranges)."""
    third = 16384 // 3
    assert key_slot(b"{14}") // (third + 1) != key_slot(b"{41}") // (third + 1)


async def test_a_registry_load_and_random_batches_on_a_cluster_give_exact_figures(cluster: RedisCluster) -> None:
    prefix = "cluster-t"
    await load_registry(cluster, prefix, read_registry(SAMPLE))  # type: ignore[arg-type]
    assert await stored.shards(cluster, prefix) == ["14", "15", "41"]  # type: ignore[arg-type]

    kinds = sample_villages()
    villages = sorted(c for c, k in kinds.items() if k == "village")
    rng = random.Random(20261206)
    chosen = rng.sample(villages, 40)
    assert {c[:2] for c in chosen} == {"14", "15", "41"}
    types = list(scan.EVENT_TYPES)
    log = [
        make_event(i, rng.choice(["sf", "yto"]), rng.choice(types), rng.choice(chosen), rng.randint(0, 500))
        for i in range(600)
    ]
    log = [e for e in log if e.event_type not in scan.VILLAGE_ONLY_TYPES or e.location_code in chosen]
    log += [rng.choice(log) for _ in range(80)]  # resends: same (carrier, event_id)
    distinct = {(e.carrier, e.event_id): e for e in log}
    reached = {e.location_code for e in distinct.values() if e.reaches}
    by_type = Counter(e.event_type for e in distinct.values())

    writer = ReadModelWriter(cluster, prefix, 3600)  # type: ignore[arg-type]
    # Each event in its location's partition, as ingest puts it; records of 8 events.
    records: list[fold.Record] = []
    for part in range(3):
        mine = [fold.entry(e) for e in log if partition_for(e.location_code, 3) == part]
        records += [fold.Record("scans", part, i // 8, mine[i : i + 8]) for i in range(0, len(mine), 8)]
    records.sort(key=lambda r: (r.offset, r.partition))  # the partitions interleaved, each in order
    for start in range(0, len(records), 7):
        await writer.apply(records[start : start + 7])
    await writer.apply(records[20:30])  # a replay: changes nothing
    ends = {f"scans:{r.partition}": r.offset for r in records}

    nation = await stored.nation(cluster, prefix)  # type: ignore[arg-type]
    assert int(nation["villages_reached"]) == len(reached)
    assert {t: int(nation.get(f"type:{t}", 0)) for t in types} == {t: by_type[t] for t in types}
    for province in ("14", "15", "41"):
        region = await cluster.hgetall(names.key(prefix, names.REGION, province))
        assert int(region.get("villages_reached", 0)) == len({v for v in reached if v.startswith(province)})
    assert (await stored.stats(cluster, prefix))["events_applied"] == len(distinct)  # type: ignore[arg-type]
    assert await stored.offsets(cluster, prefix) == ends  # type: ignore[arg-type]
