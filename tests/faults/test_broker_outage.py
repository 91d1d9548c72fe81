"""Fault: the broker freezes (SIGSTOP) under the ingest API, then thaws (SIGCONT).

The test runs its own Tansu broker (memory storage, so it is frozen, never restarted) with the ingest API
and a worker as processes against it, and posts like a carrier: several requests in flight when the broker
stops. While frozen, every POST must end in 503 with Retry-After (never 202, never a hang) within the publish
timeout, and /readyz must say the broker is down. After the thaw, posting works again, and the carrier sends
every batch that got 503 again. In the end every event is counted exactly once in Redis, by the test's own
count, including the ones that were in flight when the broker froze (written or not).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from coverage_service import dedup
from coverage_service.readmodel.registry_store import load_registry
from lastmile import names
from lastmile.registry import read_registry
from lastmile.settings import Settings
from lastmile_dev import devstack
from lastmile_dev.devstack import Proc
from tests.support import stored
from tests.support.services import SAMPLE, sample_villages, service_env, start, wait_ready

pytestmark = pytest.mark.e2e

TOKEN = "outage-carrier-token-0123456789"
PUBLISH_TIMEOUT_S = 2.0
RETRY_AFTER_S = 1
MARGIN_S = 4.0  # the answer may take the publish timeout plus this (a loaded machine's stalls); a hang takes forever
CLIENT_TIMEOUT_S = PUBLISH_TIMEOUT_S + MARGIN_S + 1.0  # a hang shows up as httpx.ReadTimeout
VILLAGES = sorted(sample_villages(lambda row: row["areaCode"] == "140322"))


@dataclass
class Outage:
    broker: Proc
    ingest: str
    settings: Settings
    procs: list[Proc] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(40)}" for p in [self.broker, *self.procs])


@pytest.fixture
async def outage(settings: Settings, tmp_path: Path, redis: aioredis.Redis) -> AsyncIterator[Outage]:
    broker, url = devstack.start_broker(tmp_path / "broker")  # this test's own broker, not the session one
    mine = settings.replace(kafka_bootstrap_servers=url)
    await load_registry(redis, mine.redis_key_prefix, read_registry(SAMPLE))
    port = devstack.free_port()
    env = service_env(
        mine,
        INGEST_PORT=str(port),
        INGEST_CARRIER_TOKENS=json.dumps({TOKEN: "sf"}),
        INGEST_PUBLISH_TIMEOUT_SECONDS=str(PUBLISH_TIMEOUT_S),
        INGEST_RETRY_AFTER_SECONDS=str(RETRY_AFTER_S),
        WORKER_BATCH_MAX="64",
    )
    running = Outage(broker, f"http://127.0.0.1:{port}", mine)
    try:
        running.procs = [start(name, env, tmp_path) for name in ("ingest", "worker")]
        wait_ready([(running.procs[0], running.ingest)])
        yield running
    finally:
        broker.signal(signal.SIGCONT)  # never leave it stopped: stop() could not end it
        for proc in running.procs:
            proc.stop()
        broker.stop()


def batch(start: int, n: int) -> list[dict[str, Any]]:
    when = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    return [
        {
            "event_id": f"bo-{i}",
            "carrier": "sf",
            "waybill": f"BO{i:08d}",
            "event_type": "delivered",
            "location_code": VILLAGES[i % len(VILLAGES)],
            "occurred_at": when,
        }
        for i in range(start, start + n)
    ]


@dataclass
class Carrier:
    """Posts batches and keeps what each got: 202 (accepted) or 503 (to send again)."""

    http: httpx.AsyncClient
    url: str
    accepted: list[list[dict[str, Any]]] = field(default_factory=list)
    refused: list[list[dict[str, Any]]] = field(default_factory=list)
    answers: list[tuple[int, float, float]] = field(default_factory=list)  # (status, started, ended)

    async def post(self, events: list[dict[str, Any]]) -> httpx.Response:
        started = time.monotonic()
        r = await self.http.post(f"{self.url}/v1/scans", json={"events": events})  # ReadTimeout = a hang
        self.answers.append((r.status_code, started, time.monotonic()))
        if r.status_code == 202:
            assert r.json()["accepted"] == len(events) and r.json()["rejected"] == [], r.text
            self.accepted.append(events)
        else:
            assert_unavailable(r)
            self.refused.append(events)
        return r


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"] == str(RETRY_AFTER_S)
    body = r.json()
    assert body["status"] == 503 and body["type"].endswith("/broker-unavailable")
    assert "retry the same batch" in body["detail"]


async def test_a_frozen_broker_means_503_then_every_event_counted_once(outage: Outage, redis: aioredis.Redis) -> None:
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        carrier = Carrier(http, outage.ingest)
        sizes = iter(range(1, 10_000))
        next_id = 0

        def take() -> list[dict[str, Any]]:
            nonlocal next_id
            n = 5 + next(sizes) % 20
            events, next_id = batch(next_id, n), next_id + n
            return events

        # 1. Normal posting.
        for _ in range(5):
            assert (await carrier.post(take())).status_code == 202, outage.logs()

        # 2. Carriers keep posting; the broker freezes with requests in flight.
        stop_posting = asyncio.Event()

        async def keep_posting() -> None:
            while not stop_posting.is_set():
                await carrier.post(take())

        posters = [asyncio.create_task(keep_posting()) for _ in range(3)]
        await asyncio.sleep(0.5)
        outage.broker.signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            # A request started after the freeze: 503 within the publish timeout, never 202, never a hang.
            started = time.monotonic()
            assert_unavailable(await carrier.post(take()))
            assert time.monotonic() - started <= PUBLISH_TIMEOUT_S + MARGIN_S
            ready = await http.get(f"{outage.ingest}/readyz")
            assert ready.status_code == 503 and ready.headers["content-type"] == "application/problem+json"
            assert ready.json()["checks"] == {"broker": False, "redis": True, "backlog": True}  # unknown is not full
            await asyncio.sleep(max(0.0, frozen_at + 2 * PUBLISH_TIMEOUT_S + 0.5 - time.monotonic()))
        finally:
            outage.broker.signal(signal.SIGCONT)
        thawed_at = time.monotonic()
        stop_posting.set()
        await asyncio.gather(*posters)

        # Every answer came in time; none of the requests the freeze saw through was 202; some were
        # in flight when it began.
        assert all(end - begin <= PUBLISH_TIMEOUT_S + MARGIN_S for _, begin, end in carrier.answers), carrier.answers
        during = [status for status, begin, end in carrier.answers if begin >= frozen_at and end < thawed_at]
        assert during and set(during) == {503}, carrier.answers
        assert any(begin < frozen_at < end for _, begin, end in carrier.answers), "nothing was in flight"
        assert carrier.refused

        # 3. Thawed: posting is accepted again (the producer may need a moment to reconnect).
        deadline = thawed_at + 20
        while True:
            r = await carrier.post(take())
            if r.status_code == 202:
                break
            assert time.monotonic() < deadline, f"still 503 after the thaw\n{outage.logs()}"
            await asyncio.sleep(float(r.headers["retry-after"]))

        # 4. The carrier sends every refused batch again, as told, until each is accepted.
        while carrier.refused:
            events = carrier.refused.pop(0)
            r = await carrier.post(events)
            if r.status_code != 202:
                assert time.monotonic() < deadline, f"still 503 after the thaw\n{outage.logs()}"
                await asyncio.sleep(float(r.headers["retry-after"]))

    # 5. Every event is counted exactly once: the test's own count against the read model.
    posted = [e for events in carrier.accepted for e in events]
    unique = {e["event_id"]: e for e in posted}
    assert len(unique) == next_id  # every event the carrier ever made was accepted in the end
    prefix = outage.settings.redis_key_prefix
    deadline = time.monotonic() + 60
    while (await stored.stats(redis, prefix)).get(names.stat.EVENTS_APPLIED, 0) < len(unique):
        assert time.monotonic() < deadline, f"{await stored.stats(redis, prefix)} of {len(unique)}\n{outage.logs()}"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)  # anything still on its way (a resend, a late in-flight write) lands now
    stats = await stored.stats(redis, prefix)
    assert stats[names.stat.EVENTS_APPLIED] == len(unique), stats
    per_village = Counter(e["location_code"] for e in unique.values())
    field_ = names.field.TYPE + "delivered"
    async with redis.pipeline(transaction=False) as pipe:
        for code in per_village:
            pipe.hget(names.key(prefix, names.LOCATION, code), field_)
        counted = await pipe.execute()
    assert {code: int(n or 0) for code, n in zip(per_village, counted, strict=True)} == dict(per_village)
    # The dedup memory holds each applied event's digest exactly once: per shard, partition and hour, a key holding
    # how many bytes are filled, over strings "<key>:0", "<key>:1" ...
    keys = {str(k) async for k in redis.scan_iter(match=names.pattern(prefix, names.DEDUP), count=1000)}
    digests = b""
    for base in (k for k in keys if f"{k}:0" in keys):
        filled = int(await redis.get(base))
        chunks = sorted((k for k in keys if k.rsplit(":", 1)[0] == base), key=lambda k: int(k.rsplit(":", 1)[1]))
        raw = [await redis.execute_command("GET", k, NEVER_DECODE=True) for k in chunks]
        digests += b"".join(raw)[:filled]
    held = [digests[i : i + dedup.DIGEST_BYTES] for i in range(0, len(digests), dedup.DIGEST_BYTES)]
    assert sorted(held) == sorted(dedup.digest("sf", e["event_id"]) for e in unique.values())
