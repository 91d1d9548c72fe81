"""The coverage API on a Redis Cluster of 3 masters (REDIS_CLUSTER_NODES) answers exactly as on one server.

The same registry and the same events go into the single Redis and the cluster through the real loader and
writer; every document is then asked of both apps and compared whole. The sample's three provinces are spread over
the masters, so the nation (summed from its provinces) and each province are read across masters.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

import httpx
import pytest
import redis.asyncio as aioredis

from coverage_service import fold
from coverage_service.readmodel import history, queries
from coverage_service.readmodel.filters import ALL
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.writer import ReadModelWriter
from lastmile import redis_client, scan
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile.topics import partition_for
from tests.support.events import make_event
from tests.support.regulator_world import national_api
from tests.support.services import SAMPLE, sample_villages

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def records() -> list[fold.Record]:
    """Random events of 40 villages of the three sample provinces, some re-sent, in records of 8 per partition;
    about half of the events within the lapse window, so that villages are active and lapsed."""
    rng = random.Random(20261206)
    villages = sorted(sample_villages(lambda row: True))
    chosen = rng.sample(villages, 40)
    assert {c[:2] for c in chosen} == {"14", "15", "41"}
    types = list(scan.EVENT_TYPES)  # all: the chosen codes are village-level
    log = [
        make_event(i, rng.choice(["sf", "yto"]), rng.choice(types), rng.choice(chosen), rng.randint(0, 1400), NOW)
        for i in range(500)
    ]
    log += [rng.choice(log) for _ in range(60)]
    out: list[fold.Record] = []
    for part in range(3):
        mine = [fold.entry(e) for e in log if partition_for(e.location_code, 3) == part]
        out += [fold.Record("scans", part, i // 8, mine[i : i + 8]) for i in range(0, len(mine), 8)]
    return out


async def fill(client: aioredis.Redis, settings: Settings) -> None:
    prefix = settings.redis_key_prefix
    await load_registry(client, prefix, read_registry(SAMPLE), population_tiers=settings.population_tiers)
    writer = ReadModelWriter(client, prefix, 3600)
    batch = records()
    for start in range(0, len(batch), 7):
        await writer.apply(batch[start : start + 7])


async def test_every_document_on_a_cluster_equals_the_one_on_one_server(
    settings: Settings, redis: aioredis.Redis, redis_cluster_nodes: str
) -> None:
    on_cluster = settings.replace(redis_cluster_nodes=redis_cluster_nodes)
    cluster = redis_client.connect(on_cluster)
    try:
        await fill(redis, settings)
        await fill(cluster, settings)
        villages = sorted(sample_villages(lambda row: True))
        county, township = villages[0][:6], villages[0][:9]
        paths = [
            "/v1/coverage",
            "/v1/coverage/CN?carrier=sf",
            "/v1/coverage/CN?min_population=2500",
            *(f"/v1/coverage/{p}" for p in ("14", "15", "41")),
            "/v1/coverage/41?cooperation_model=other",
            f"/v1/coverage/{county[:4]}",
            f"/v1/coverage/{county}",
            f"/v1/coverage/{township}?carrier=yto",
            f"/v1/coverage/{county}/unreached",
            f"/v1/villages/{villages[0]}",
            f"/v1/villages/{villages[-1]}",
            "/v1/laggards/CN",
            "/v1/laggards/14",
            "/v1/coverage/CN?format=csv",
        ]
        answers: dict[str, list[httpx.Response]] = {p: [] for p in paths}
        for s in (settings, on_cluster):
            async with national_api(s) as client:
                for path in paths:
                    answers[path].append(await client.get(path))
        for path, (single, clustered) in answers.items():
            assert single.status_code == 200, (path, single.text)
            assert clustered.status_code == 200, (path, clustered.text)
            if single.headers["content-type"].startswith("application/json"):
                assert clustered.json() == single.json(), path
            else:
                assert clustered.text == single.text, path
        national = answers["/v1/coverage"][1].json()
        assert national["villages_reached"] > 0 and national["villages_active"] > 0
        assert {c["code"] for c in national["children"]} == {"14", "15", "41"}

        # The daily snapshot reads every region through the same reader: it works on the cluster too.
        taken = await history.take(cluster, settings.redis_key_prefix, NOW.date(), now_ms=0, lapse_days=1)
        assert taken.regions > 3 and taken.written == taken.regions
    finally:
        await cluster.aclose()


async def test_many_documents_at_once_on_a_cluster_wait_for_connections_instead_of_failing(
    settings: Settings, redis_cluster_nodes: str
) -> None:
    """A national document fans out over every shard: far more calls in flight than a node's pool holds."""
    cluster = redis_client.connect(settings.replace(redis_cluster_nodes=redis_cluster_nodes))
    try:
        await fill(cluster, settings)
        reader = queries.Reader.on(cluster, settings.redis_key_prefix)
        window = fold.lapse_window(int(time.time() * 1000), 30)
        one = await reader.nation(window, ALL)
        many = await asyncio.gather(*(reader.nation(window, ALL) for _ in range(300)))
        assert all(n.document(ALL) == one.document(ALL) for n in many)
    finally:
        await cluster.aclose()
