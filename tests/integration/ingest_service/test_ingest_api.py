"""The ingest API against the real broker and Redis: what is answered, and what reaches the topic."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from ingest_service.app import create_app
from lastmile.settings import Settings
from lastmile.topics import partition_for
from lastmile_dev import devstack
from tests.support import stored
from tests.support.ingest_world import VILLAGES, running_ingest, scan_event, topic_records
from tests.support.ingest_world import auth as bearer

pytestmark = pytest.mark.integration

TOKEN = "sf-token-0123456789abcdef"
OTHER_TOKEN = "yto-token-0123456789abcdef"


@pytest.fixture
def ingest_settings(settings: Settings) -> Settings:
    return settings.replace(
        carrier_tokens=json.dumps({TOKEN: "sf", OTHER_TOKEN: "yto"}),
        ingest_max_events=50,
        ingest_max_body_bytes=64 * 1024,
    )


@pytest.fixture
async def client(ingest_settings: Settings, redis: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with running_ingest(ingest_settings, redis) as ingest:
        yield ingest.http


def auth(token: str = TOKEN) -> dict[str, str]:
    return bearer(token)


async def test_a_valid_batch_is_acknowledged_and_packed_per_partition(
    client: httpx.AsyncClient, ingest_settings: Settings
) -> None:
    events = [scan_event(i) for i in range(12)]
    response = await client.post("/v1/scans", json={"events": events}, headers=auth())
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 12 and body["rejected"] == []
    assert response.headers["x-request-id"] == body["request_id"]

    records = await topic_records(ingest_settings, 12)
    seen = [(part, e["event_id"], e["location_code"]) for part, r in records for e in r["events"]]
    assert sorted(e for _, e, _ in seen) == sorted(e["event_id"] for e in events)
    for part, _, code in seen:  # each event sits where Kafka's partitioner puts its location
        assert part == partition_for(code, ingest_settings.scan_topic_partitions)
    assert len(records) == len({part for part, _, _ in seen})  # one record per partition


async def test_invalid_events_are_rejected_by_index_and_the_rest_accepted(client: httpx.AsyncClient) -> None:
    events = [
        scan_event(0),
        scan_event(1, occurred_at="2024-05-01T08:00:00"),
        scan_event(2, location_code="140322299999"),  # well-formed, not in the registry
        scan_event(3, carrier="yto"),
        scan_event(0),  # the same event_id again in one batch
        scan_event(5, event_type="arrived_at_hub", location_code="140322205"),
    ]
    response = await client.post("/v1/scans", json={"events": events}, headers=auth())
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    rejected = {r["index"]: r for r in body["rejected"]}
    assert sorted(rejected) == [1, 2, 3, 4]
    assert rejected[1]["event_id"] == "sf-1"
    assert "occurred_at: needs an explicit UTC offset" in rejected[1]["errors"][0]
    assert rejected[2]["errors"] == ["location_code: 140322299999 is not in the division registry"]
    assert "is not the carrier this token belongs to" in rejected[3]["errors"][0]
    assert rejected[4]["errors"] == ["event_id: repeats the event at index 0"]


async def test_a_batch_with_nothing_valid_is_422_with_the_list(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/scans", json={"events": [{"event_id": "x"}]}, headers=auth())
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["accepted"] == 0 and body["rejected"][0]["index"] == 0
    assert body["status"] == 422 and body["type"].endswith("/no-valid-events")


@pytest.mark.parametrize(
    ("headers", "content", "status", "detail"),
    [
        ({}, b'{"events": []}', 401, "Bearer"),
        ({"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"}, b'{"events": []}', 401, "unknown token"),
        ({"Authorization": f"Basic {TOKEN}"}, b'{"events": []}', 401, "Bearer"),
        ({**auth(), "Content-Type": "text/plain"}, b"{}", 415, "application/json"),
        ({**auth(), "Content-Type": "application/json"}, b'{"events": [', 400, "not valid JSON"),
        ({**auth(), "Content-Type": "application/json"}, b"\xff\xfe", 400, "not valid JSON"),
        ({**auth(), "Content-Type": "application/json"}, b"[]", 400, "JSON object"),
        ({**auth(), "Content-Type": "application/json"}, b'{"events": []}', 400, "empty"),
        ({**auth(), "Content-Type": "application/json"}, b'{"events": {}}', 400, "array"),
        ({**auth(), "Content-Type": "application/json"}, b'{"events": [1], "x": 1}', 400, "unknown top-level"),
        ({**auth(), "Content-Type": "application/json"}, b'{"events": [' + b"{}," * 50 + b"{}]}", 413, "limit is 50"),
        ({**auth(), "Content-Type": "application/json"}, b" " * (64 * 1024 + 1), 413, "limit"),
    ],
)
async def test_request_errors_are_problem_json(
    client: httpx.AsyncClient, headers: dict[str, str], content: bytes, status: int, detail: str
) -> None:
    response = await client.post("/v1/scans", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and detail in body["detail"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_tokens_never_reach_the_logs(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await client.post("/v1/scans", json={"events": [scan_event(0)]}, headers=auth())
    await client.post("/v1/scans", json={"events": [scan_event(0)]}, headers=auth("not-a-real-token-at-all"))
    assert caplog.records  # something was logged
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert TOKEN not in text and "not-a-real-token-at-all" not in text


async def test_health_ready_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"broker": True, "redis": True, "backlog": True}
    await client.post("/v1/scans", json={"events": [scan_event(0), {"bad": 1}]}, headers=auth())
    metrics = (await client.get("/metrics")).text
    assert "lastmile_ingest_backlog_bound_records 20000.0" in metrics
    assert "lastmile_ingest_refusing_posts 0.0" in metrics
    assert 'lastmile_ingest_events_total{carrier="sf",outcome="accepted"} 1.0' in metrics
    assert 'lastmile_ingest_events_total{carrier="sf",outcome="rejected"} 1.0' in metrics
    assert 'lastmile_ingest_requests_total{status="202"} 1.0' in metrics
    assert 'lastmile_ingest_request_duration_seconds_count{status="202"} 1.0' in metrics
    assert 'lastmile_ingest_batch_events_bucket{le="10.0"} 1.0' in metrics  # the batch of two
    assert "process_cpu_seconds_total" in metrics


async def test_no_broker_means_503_with_retry_after_never_202(settings: Settings, redis: aioredis.Redis) -> None:
    dead = settings.replace(
        kafka_bootstrap_servers=f"127.0.0.1:{devstack.free_port()}",
        carrier_tokens=json.dumps({TOKEN: "sf"}),
        ingest_publish_timeout_seconds=1.0,
    )
    await stored.set_kinds(redis, dead.redis_key_prefix, dict.fromkeys(VILLAGES, "village"))
    app = create_app(dead)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as c:
            response = await c.post("/v1/scans", json={"events": [scan_event(0)]}, headers=auth())
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert response.headers["content-type"] == "application/problem+json"
            ready = await c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["broker"] is False


async def test_openapi_documents_the_contract(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    post = doc["paths"]["/v1/scans"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["events"]["maxItems"] == 50  # INGEST_MAX_EVENTS of this test
    assert set(post["responses"]) >= {"202", "400", "401", "413", "415", "422", "503"}
    assert "/healthz" in doc["paths"] and "/readyz" in doc["paths"] and "/metrics" in doc["paths"]
