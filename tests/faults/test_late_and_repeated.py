"""Late, out-of-order and thrice-sent events through the real ingest HTTP service, read back from Redis and the
coverage API.

The contract accepts any age and at most 5 minutes in the future (lastmile/scan.py), so events are sent from a few
minutes ahead to over a year late (another parcel-volume year), shuffled across posts, in three waves: recent
scans first, then scans hours to weeks older than what the villages already hold (first reach moves back, last
reach does not; a lapsed village becomes active again through a late recent scan), then the repeats. Every event
of a chosen set is sent three times: in three different POSTs (one POST may not repeat an event: that is refused
by contract), where the third copy of some goes straight to the topic, in a record of another partition than its
location's, as anything with write access to the topic may publish: the worker sends those to the dead-letter topic
(repeats are recognised within the location's partition). The whole read model must equal the test's own count, and
the coverage API must show the first and last reach times, active/lapsed and as_of it implies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from lastmile import names
from lastmile.settings import Settings
from lastmile.topics import partition_for
from lastmile_dev import devstack
from lastmile_dev.devstack import Proc
from tests.support import oracle, stored
from tests.support.faultkit import VILLAGES, EventMaker, Expected, assert_exact, seeded, wait_caught_up
from tests.support.services import load_sample_registry, service_env, start, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

TOKENS = {"late-carrier-token-sf-0123456789": "sf", "late-carrier-token-zto-012345678": "zto"}
BY_CARRIER = {carrier: token for token, carrier in TOKENS.items()}
REGULATOR = "late-regulator-token-0123456789"
LAPSE_DAYS = 30  # LAPSE_WINDOW_DAYS's default


@dataclass
class Services:
    settings: Settings
    ingest: str
    coverage: str
    procs: list[Proc]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(15)}" for p in self.procs)


@pytest.fixture
def services(settings: Settings, tmp_path: Path) -> Iterator[Services]:
    ingest_port, coverage_port = devstack.free_port(), devstack.free_port()
    env = service_env(
        settings,
        INGEST_PORT=str(ingest_port),
        COVERAGE_PORT=str(coverage_port),
        INGEST_CARRIER_TOKENS=json.dumps(TOKENS),
        COVERAGE_REGULATOR_TOKENS=json.dumps({REGULATOR: ""}),
        COVERAGE_RATE_LIMIT_PER_SECOND="0",
    )
    load_sample_registry(env, tmp_path)
    procs = [start(name, env, tmp_path) for name in ("ingest", "worker", "coverage")]
    running = Services(settings, f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{coverage_port}", procs)
    try:
        wait_ready([(procs[0], running.ingest), (procs[2], running.coverage)])
        yield running
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def post(http: httpx.AsyncClient, url: str, events: list[dict[str, Any]], expected: Expected) -> None:
    """One POST per carrier; every event must be accepted (202 with nothing rejected)."""
    for carrier in sorted({e["carrier"] for e in events}):
        mine = [e for e in events if e["carrier"] == carrier]
        ids = [e["event_id"] for e in mine]
        assert len(ids) == len(set(ids)), "one POST never repeats an event"
        r = await http.post(
            f"{url}/v1/scans", json={"events": mine}, headers={"Authorization": f"Bearer {BY_CARRIER[carrier]}"}
        )
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == len(mine) and r.json()["rejected"] == [], r.text
        expected.add(mine)


def utc_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_late_out_of_order_and_thrice_sent_events_count_once_with_exact_times(
    services: Services, settings: Settings, redis: aioredis.Redis, http: httpx.AsyncClient
) -> None:
    rng, seed = seeded("test_late_out_of_order_and_thrice_sent_events_count_once_with_exact_times")
    expected = Expected()
    villages = sorted(VILLAGES)
    chosen = rng.sample(villages, 24)
    revived, back_dated = chosen[:4], chosen[4:8]  # lapsed, then a late recent scan; reached, then a late old one
    maker = EventMaker(rng, "late", carriers=("sf", "zto"), units=chosen)
    reach = ("delivered", "arrived_at_station", "picked_up", "collected")

    def at(days: float, code: str | None = None, kind: str | None = None) -> dict[str, Any]:
        return maker.event(age=timedelta(days=days), code=code, kind=kind or rng.choice(reach))

    # Wave 1: recent scans (minutes to days old, a few up to 4 minutes ahead), and the lapsed villages' only ones.
    wave1 = [maker.event(age=timedelta(minutes=rng.uniform(-4, 60 * 24 * 5))) for _ in range(120)]
    wave1 += [at(rng.uniform(35, 60), code) for code in revived]
    wave1 += [at(rng.uniform(1, 5), code) for code in back_dated]
    # Wave 2: late and out of order: hours to weeks older than wave 1, one over a year late, and the late
    # scans that move reach times: recent ones for the lapsed villages, old ones for the back-dated.
    wave2 = [maker.event(age=timedelta(hours=rng.uniform(6, 24 * 25))) for _ in range(60)]
    wave2 += [maker.event(age=timedelta(days=rng.uniform(36, 90))) for _ in range(20)]
    wave2 += [maker.event(age=timedelta(days=400 + rng.uniform(0, 30))) for _ in range(5)]
    wave2 += [at(rng.uniform(0.1, 2), code) for code in revived]
    wave2 += [at(rng.uniform(40, 80), code) for code in back_dated]
    thrice = rng.sample(wave1, 25) + rng.sample(wave2, 25)

    # Wave 1's chosen events go a second time with wave 2, and wave 2's after it.
    for wave, repeats in ((wave1, []), (wave2, thrice[:25])):
        shuffled = wave + repeats
        rng.shuffle(shuffled)
        for i in range(0, len(shuffled), 40):
            await post(http, services.ingest, shuffled[i : i + 40], expected)
        await wait_caught_up(redis, settings, expected, within=60, context=services.logs)
    # The repeats: every chosen event a second time (if not yet) and a third, each in other POSTs.
    second = thrice[25:]
    third = list(thrice)
    rng.shuffle(second)
    rng.shuffle(third)
    await post(http, services.ingest, second, expected)
    direct, posted = third[:15], third[15:]
    await post(http, services.ingest, posted[: len(posted) // 2], expected)
    await post(http, services.ingest, posted[len(posted) // 2 :], expected)
    # The last copies straight to the topic, each in a record of another partition than its location's.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        partitions = settings.scan_topic_partitions
        for e in direct:
            other = (partition_for(e["location_code"], partitions) + 1) % partitions
            body = {"received_at": e["occurred_at"], "events": [e]}
            await producer.send_and_wait(settings.scan_topic, orjson.dumps(body), key=b"direct", partition=other)
    finally:
        await producer.stop()
    await wait_caught_up(redis, settings, expected, within=60, context=services.logs)

    assert expected.duplicates == 100 - len(direct)  # 50 events three times each, but the misplaced copies
    await assert_exact(redis, settings.redis_key_prefix, expected, seed, services.logs())
    stats = await stored.stats(redis, settings.redis_key_prefix)
    assert stats[names.stat.DEAD_LETTERS] == len(direct), stats

    # The coverage API shows the same: reach times, active or lapsed, as_of.
    want = expected.figures()
    now = datetime.now(UTC)
    window_start = oracle.window_start_ms(int(now.timestamp() * 1000), LAPSE_DAYS)
    auth = {"Authorization": f"Bearer {REGULATOR}"}
    for code in chosen:
        r = await http.get(f"{services.coverage}/v1/villages/{code}", headers=auth)
        assert r.status_code == 200, r.text
        page, loc = r.json(), want["locations"].get(code, {})
        assert page["reached"] is ("reached" in loc), (code, seed)
        if "reached" in loc:
            last = loc["last_reach_ms"]
            assert page["first_reach_at"] == utc_text(loc["first_reach_ms"]), (code, seed)
            assert page["last_reach_at"] == utc_text(last), (code, seed)
            assert page["active"] is (last >= window_start), (code, seed)
    for code in revived:
        assert want["locations"][code]["first_reach_ms"] < (now - timedelta(days=35)).timestamp() * 1000
    township = chosen[0][:9]
    r = await http.get(f"{services.coverage}/v1/coverage/{township}", headers=auth)
    assert r.status_code == 200, r.text
    body, region = r.json(), want["regions"][township]
    index = want["lapse_indexes"].get(township, {})
    active = sum(1 for ms in index.values() if ms >= window_start)
    assert body["villages_reached"] == region.get("villages_reached", 0) == len(index), seed
    assert (body["villages_active"], body["villages_lapsed"]) == (active, len(index) - active), seed
    assert body["as_of"] == utc_text(region["as_of_ms"]), seed
    national = (await http.get(f"{services.coverage}/v1/coverage", headers=auth)).json()
    assert national["as_of"] == utc_text(want["regions"][names.NATIONAL]["as_of_ms"]), seed
