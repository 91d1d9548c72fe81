"""Live fixtures: a real Tansu broker and a real redis-server, each started on a free port.

Set LASTMILE_KAFKA_BOOTSTRAP_SERVERS / LASTMILE_REDIS_URL in the environment to run the suite against servers of
your own instead (for example Apache Kafka from docker-compose.yml). Tests isolate themselves with a unique topic
and a unique Redis key prefix each, as faust-streaming's own integration tests do.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from lastmile.registry import BUNDLED
from lastmile.settings import Settings, lookup
from lastmile_dev import devstack
from tests.support import isolated

SAMPLE_REGISTRY = BUNDLED["sample"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """In CI (CI=true) a skipped test fails: a missing registry or server there is a broken run, not a pass."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be skipped: {reason}"


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = lookup(os.environ, "KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    proc, url = devstack.start_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = lookup(os.environ, "REDIS_URL")
    if external:
        yield external
        return
    proc, url = devstack.start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def redis_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """REDIS_CLUSTER_NODES of a Redis Cluster of 3 masters (redis-server --cluster-enabled), or of your own."""
    external = lookup(os.environ, "REDIS_CLUSTER_NODES")
    if external:
        yield external
        return
    procs, nodes = devstack.start_redis_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield ",".join(nodes)
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(broker_url: str, redis_url: str, unique: str) -> Settings:
    """Settings for one test: its own topics, consumer group and Redis key prefix."""
    return isolated.settings(broker_url, redis_url, f"t{unique}")


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
