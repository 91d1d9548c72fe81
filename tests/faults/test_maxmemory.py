"""Fault: the read model's Redis reaches maxmemory (noeviction) while carriers post over HTTP.

The worker must stop folding and say so, never crash; ingest must go on accepting until the backlog passes its bound,
then answer 503 (problem type ``backlog``, Retry-After) and show it on /readyz and /metrics. Once memory is raised the
worker resumes by itself and every event that was answered 202 is counted exactly once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from coverage_service.readmodel.registry_store import load_registry
from lastmile import backlog
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile.topics import ensure_topics
from lastmile_dev import devstack
from tests.support.faultkit import EventMaker, Expected, assert_exact, folded, seeded, until, wait_caught_up
from tests.support.services import SAMPLE, service_env, start, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TOKEN = "maxmemory-carrier-token-0123456789"
BOUND_RECORDS = 40
RETRY_AFTER_S = 1
HEADROOM_BYTES = 150_000  # what the worker may fill before Redis refuses it


async def test_redis_at_maxmemory_pauses_folding_then_ingest_refuses_and_all_resumes_exact(
    settings: Settings, tmp_path: Path
) -> None:
    rng, seed = seeded("test_redis_at_maxmemory_pauses_folding_then_ingest_refuses_and_all_resumes_exact")
    port = devstack.free_port()
    proc, url = devstack.start_redis(tmp_path / "redis", port)
    mine = settings.replace(redis_url=url)
    prefix = mine.redis_key_prefix
    redis = aioredis.from_url(url, decode_responses=True)
    await load_registry(redis, prefix, read_registry(SAMPLE))
    await ensure_topics(mine)
    ingest_port = devstack.free_port()
    env = service_env(
        mine,
        INGEST_PORT=str(ingest_port),
        INGEST_CARRIER_TOKENS=json.dumps({TOKEN: "mm"}),
        INGEST_MAX_BACKLOG_RECORDS=str(BOUND_RECORDS),
        INGEST_RETRY_AFTER_SECONDS=str(RETRY_AFTER_S),
        WORKER_BATCH_MAX="4",
    )
    ingest_url = f"http://127.0.0.1:{ingest_port}"
    procs = [start(name, env, tmp_path) for name in ("ingest", "worker")]
    ingest, worker = procs
    maker = EventMaker(rng, "mx", carriers=("mm",))
    expected = Expected()
    made: list[dict[str, Any]] = []

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(30)}" for p in procs)

    async def post(http: httpx.AsyncClient) -> httpx.Response:
        fresh = maker.events(15)
        repeats = rng.sample(made, min(5, len(made)))  # resends of earlier events: counted once
        events = fresh + [e for e in repeats if e["event_id"] not in {f["event_id"] for f in fresh}]
        r = await http.post(f"{ingest_url}/v1/scans", json={"events": events})
        if r.status_code == 202:
            expected.add(events)
            made.extend(fresh)
        return r

    try:
        wait_ready([(ingest, ingest_url)])
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            for _ in range(10):
                assert (await post(http)).status_code == 202
            await until(lambda: folded(redis, prefix), within=60, what="the worker folds", context=logs)

            used = int((await redis.info("memory"))["used_memory"])
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", str(used + HEADROOM_BYTES))

            # Carriers go on posting, at a pace the worker keeps up with, until Redis refuses the worker.
            for _ in range(600):
                if "Redis is at maxmemory: folding paused" in worker.log_path.read_text(errors="replace"):
                    break
                r = await post(http)
                assert r.status_code == 202, r.text
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the worker never met maxmemory\n{logs()}")
            assert worker.alive(), logs()
            await asyncio.sleep(1.5)  # ingest's watch (each second) sees the full Redis
            # Ingest accepts while the backlog is within its bound, then refuses.
            refused: httpx.Response | None = None
            for _ in range(2_000):
                r = await post(http)
                if r.status_code == 503:
                    refused = r
                    break
                assert r.status_code == 202, r.text
            assert refused is not None, f"never refused\n{logs()}"
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
            problem = refused.json()
            assert problem["type"].endswith("/backlog"), problem
            assert f"bound {BOUND_RECORDS}" in problem["detail"] and "maxmemory" in problem["detail"], problem

            assert worker.alive(), logs()
            ready = await http.get(f"{ingest_url}/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["backlog"] is False, ready.text
            assert "maxmemory" in ready.json()["redis_memory"]
            scraped = (await http.get(f"{ingest_url}/metrics")).text
            assert "lastmile_ingest_refusing_posts 1.0" in scraped
            used_now, limit = (
                _gauge(scraped, "lastmile_redis_memory_used_bytes"),
                _gauge(scraped, "lastmile_redis_memory_max_bytes"),
            )
            assert limit == used + HEADROOM_BYTES and used_now >= limit * backlog.FULL_FRACTION

            # Memory is freed (raised): folding resumes by itself, and ingest accepts again.
            await redis.config_set("maxmemory", "0")
            await until(lambda: _accepts(post, http), within=60, what="ingest accepts again", every=0.5, context=logs)
        await wait_caught_up(redis, mine, expected, within=90, context=logs)
        assert "folding resumed" in worker.log_path.read_text(errors="replace"), logs()
        assert worker.alive(), logs()
        await assert_exact(redis, prefix, expected, seed, logs())
    finally:
        for p in procs:
            p.stop()
        await redis.aclose()
        proc.stop()


def _gauge(scraped: str, name: str) -> float:
    [line] = [row for row in scraped.splitlines() if row.startswith(name + " ")]
    return float(line.split()[1])


async def _accepts(post: Any, http: httpx.AsyncClient) -> bool:
    return bool((await post(http)).status_code == 202)
