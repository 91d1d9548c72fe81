"""The ingest API in process against the real broker and Redis, for the carrier-side tests: a few villages in the
registry, scan events for them, a client, and what reached the topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI

from ingest_service.app import create_app
from lastmile.settings import Settings
from tests.support import stored

VILLAGES = [f"1403222052{i:02d}" for i in range(6)]
TOWNSHIP = "140322205"


def scan_event(i: int, tag: str = "sf", **changes: Any) -> dict[str, Any]:
    """A valid event for village ``i`` (mod 6), one hour old; ``tag`` names its event_id and waybill."""
    return {
        "event_id": f"{tag}-{i}",
        "carrier": "sf",
        "waybill": f"{tag.upper()}{i}",
        "event_type": "delivered",
        "location_code": VILLAGES[i % len(VILLAGES)],
        "occurred_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        **changes,
    }


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def seed_villages(redis: aioredis.Redis, settings: Settings) -> None:
    """The villages and their township in the registry lookup ingest validates against."""
    await stored.set_kinds(
        redis, settings.redis_key_prefix, dict.fromkeys(VILLAGES, "village") | {TOWNSHIP: "township"}
    )


@dataclass
class Ingest:
    app: FastAPI
    http: httpx.AsyncClient
    settings: Settings


@asynccontextmanager
async def running_ingest(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[Ingest]:
    """The app through its lifespan, once its publisher is connected, with a client on it."""
    await seed_villages(redis, settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        for _ in range(200):
            if app.state.publisher.connected:
                break
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest", timeout=10) as http:
            yield Ingest(app, http, settings)


async def topic_records(settings: Settings, events: int, *, settle: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """The (partition, record) pairs on the test's topic, once they hold ``events`` events; with ``settle``,
    also until two polls find nothing more, so that anything extra shows."""
    consumer = AIOKafkaConsumer(
        settings.scan_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        quiet = 0
        for _ in range(50):
            batches = await consumer.getmany(timeout_ms=200)
            out += [(tp.partition, orjson.loads(m.value)) for tp, msgs in batches.items() for m in msgs]
            quiet = quiet + 1 if not batches else 0
            if sum(len(r["events"]) for _, r in out) >= events and (not settle or quiet >= 2):
                break
    finally:
        await consumer.stop()
    return out
