"""End to end: a regulator's live stream shows scans posted to the ingest API, through the real pipeline.

The ingest API, the worker and the coverage API run as processes on the real broker and redis-server
(as in test_pipeline.py). A county bureau's token opens /v1/stream/{township}; scans are posted; the next
event must carry the figures this test computes from the registry CSV itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from lastmile.settings import Settings
from lastmile.topics import partition_for
from lastmile_dev import devstack
from tests.support.services import load_sample_registry, sample_villages, service_env, start, wait_ready

pytestmark = pytest.mark.e2e

TOWNSHIP = "140322100"  # 秀水镇, 盂县
CARRIER_TOKEN = "e2e-live-carrier-token-0123456789"
COUNTY_TOKEN = "e2e-live-county-token-0123456789"  # 盂县 140322 and below
PARTITIONS = 4


def administrative_villages(township: str) -> list[str]:
    return sorted(sample_villages(lambda row: row["streetCode"] == township))


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, str]]:
    ingest_port, coverage_port = devstack.free_port(), devstack.free_port()
    env = service_env(
        settings,
        SCAN_TOPIC_PARTITIONS=str(PARTITIONS),
        INGEST_PORT=str(ingest_port),
        COVERAGE_PORT=str(coverage_port),
        INGEST_CARRIER_TOKENS=json.dumps({CARRIER_TOKEN: "sf"}),
        COVERAGE_REGULATOR_TOKENS=json.dumps({COUNTY_TOKEN: "140322"}),
        COVERAGE_STREAM_POLL_SECONDS="0.2",
    )
    load_sample_registry(env, tmp_path)
    procs = [start(name, env, tmp_path) for name in ("ingest", "worker", "coverage")]
    ingest, coverage = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{coverage_port}"
    try:
        wait_ready([(procs[0], ingest), (procs[2], coverage)])
        yield ingest, coverage
    finally:
        for proc in procs:
            proc.stop()


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The `coverage` events of a stream: {"id": ..., "figures": {...}}."""
    block: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            name, _, value = line.partition(":")
            block[name] = block.get(name, "") + value.removeprefix(" ")
            continue
        if block.get("event") == "coverage":
            yield {"id": block["id"], "figures": json.loads(block["data"])}
        block = {}


async def test_a_stream_shows_posted_scans(stack: tuple[str, str]) -> None:
    ingest, coverage = stack
    villages = administrative_villages(TOWNSHIP)
    # Three villages whose events share a partition: one POST is then one Kafka record, which the worker
    # applies in one atomic step, so the next event carries all of it (never half).
    same = [v for v in villages if partition_for(v, PARTITIONS) == partition_for(villages[0], PARTITIONS)]
    assert len(same) >= 3, same
    first, second, third = same[:3]
    when = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    posted = [
        {
            "event_id": "live-1",
            "carrier": "sf",
            "waybill": "SF1",
            "event_type": "delivered",
            "location_code": first,
            "occurred_at": when,
            "station_id": "YX-1",
        },
        {
            "event_id": "live-2",
            "carrier": "sf",
            "waybill": "SF2",
            "event_type": "picked_up",
            "location_code": second,
            "occurred_at": when,
        },
        # Out for delivery does not reach a village.
        {
            "event_id": "live-3",
            "carrier": "sf",
            "waybill": "SF3",
            "event_type": "out_for_delivery",
            "location_code": third,
            "occurred_at": when,
        },
    ]
    total = len(villages)

    headers = {"Authorization": f"Bearer {COUNTY_TOKEN}"}
    async with (
        httpx.AsyncClient(base_url=coverage, timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", f"/v1/stream/{TOWNSHIP}", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        async with asyncio.timeout(30):
            before = await anext(stream)
        assert before["figures"]["code"] == TOWNSHIP
        assert (before["figures"]["villages_total"], before["figures"]["villages_reached"]) == (total, 0)

        r = await client.post(
            f"{ingest}/v1/scans", json={"events": posted}, headers={"Authorization": f"Bearer {CARRIER_TOKEN}"}
        )
        assert r.status_code == 202, r.text
        assert (r.json()["accepted"], r.json()["rejected"]) == (3, [])

        async with asyncio.timeout(90):  # the worker may still be joining its group
            after = await anext(stream)
        figures = after["figures"]
        assert figures["villages_total"] == total
        assert figures["villages_reached"] == 2
        assert figures["coverage_rate"] == round(2 / total, 6)
        assert (figures["villages_active"], figures["villages_lapsed"], figures["villages_with_station"]) == (2, 0, 1)
        assert after["id"] != before["id"]

    # The same token may not watch the whole county's neighbour, nor the nation.
    async with httpx.AsyncClient(base_url=coverage, timeout=10, headers=headers) as client:
        assert (await client.get("/v1/stream/140302")).status_code == 403
        assert (await client.get("/v1/stream")).status_code == 403
