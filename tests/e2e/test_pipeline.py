"""End to end: the three services as real processes on the real broker and redis-server.

Scans for villages of 盂县 (140322) are posted over HTTP; the coverage API must show exactly the
villages this test computes from the registry CSV itself, and keep showing them after the same posts
are repeated and after the worker is killed with SIGKILL mid-stream and restarted.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from lastmile.settings import Settings
from lastmile_dev import devstack
from lastmile_dev.devstack import Proc
from tests.support.services import load_sample_registry, sample_units, sample_villages, service_env, start, wait_ready

pytestmark = pytest.mark.e2e

COUNTY = "140322"
TOKEN = "e2e-carrier-token-0123456789"
REGULATOR_TOKEN = "e2e-regulator-token-0123456789"  # national
REACH = ("arrived_at_station", "delivered", "picked_up", "collected")


def administrative_villages(county: str) -> dict[str, str]:
    """Village code -> township code for the county's administrative villages, by the classification rule."""
    return sample_villages(lambda row: row["areaCode"] == county)


def county_units(county: str) -> list[str]:
    return sample_units(lambda row: row["areaCode"] == county)


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    logs: Path
    ingest: str
    coverage: str
    worker: Proc

    def start_worker(self) -> None:
        self.worker = start("worker", self.env, self.logs)


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    ingest_port, coverage_port = devstack.free_port(), devstack.free_port()
    env = service_env(
        settings,
        INGEST_PORT=str(ingest_port),
        COVERAGE_PORT=str(coverage_port),
        INGEST_CARRIER_TOKENS=json.dumps({TOKEN: "sf"}),
        COVERAGE_REGULATOR_TOKENS=json.dumps({REGULATOR_TOKEN: ""}),
    )
    load_sample_registry(env, tmp_path)
    procs = [start(name, env, tmp_path) for name in ("ingest", "worker", "coverage")]
    ingest = f"http://127.0.0.1:{ingest_port}"
    coverage = f"http://127.0.0.1:{coverage_port}"
    running = Stack(settings, env, tmp_path, ingest, coverage, procs[1])
    try:
        wait_ready([(procs[0], ingest), (procs[2], coverage)])
        yield running
    finally:
        for proc in [*procs, running.worker]:  # the test may have replaced the worker
            proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # The coverage API's token by default; posts to the ingest API send the carrier's instead.
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {REGULATOR_TOKEN}"}) as client:
        yield client


def make_events(rng: random.Random, units: list[str], start: int, n: int) -> list[dict[str, Any]]:
    base = datetime.now(UTC) - timedelta(days=3)
    events = []
    for i in range(start, start + n):
        code = rng.choice(units)
        event_type = rng.choice([*REACH, "out_for_delivery", "out_for_delivery", "arrived_at_hub"])
        if event_type == "arrived_at_hub":
            code = code[:9]
        events.append(
            {
                "event_id": f"e2e-{i}",
                "carrier": "sf",
                "waybill": f"SF{i:010d}",
                "event_type": event_type,
                "location_code": code,
                # Out of order on purpose: times are random within three days.
                "occurred_at": (base + timedelta(minutes=rng.randint(0, 3 * 24 * 60)))
                .astimezone(__import__("datetime").timezone(timedelta(hours=8)))
                .isoformat(),
            }
        )
    return events


def expected_figures(events: list[dict[str, Any]], villages: dict[str, str]) -> tuple[set[str], dict[str, int]]:
    reached = {e["location_code"] for e in events if e["event_type"] in REACH and e["location_code"] in villages}
    by_township: dict[str, int] = {}
    for code in reached:
        by_township[villages[code]] = by_township.get(villages[code], 0) + 1
    return reached, by_township


async def post_all(
    http: httpx.AsyncClient, url: str, events: list[dict[str, Any]], size: int = 400, pause: float = 0.0
) -> int:
    accepted = 0
    for i in range(0, len(events), size):
        await asyncio.sleep(pause)
        while True:
            r = await http.post(
                f"{url}/v1/scans", json={"events": events[i : i + size]}, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            if r.status_code == 503:  # the documented answer while the broker cannot take writes
                await asyncio.sleep(float(r.headers["retry-after"]))
                continue
            assert r.status_code == 202, r.text
            assert r.json()["rejected"] == []
            accepted += r.json()["accepted"]
            break
    return accepted


async def coverage(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await http.get(f"{url}/v1/coverage/{COUNTY}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def applied_total(http: httpx.AsyncClient, url: str) -> tuple[int, int]:
    """(events applied, duplicates dropped) from the coverage API's metrics."""
    text = (await http.get(f"{url}/metrics")).text
    values = {}
    for line in text.splitlines():
        for name in ("lastmile_events_applied_total", "lastmile_events_duplicate_total"):
            if line.startswith(name + " "):
                values[name] = int(float(line.split()[1]))
    return values.get("lastmile_events_applied_total", 0), values.get("lastmile_events_duplicate_total", 0)


async def wait_for(http: httpx.AsyncClient, url: str, applied: int, duplicate: int, within: float = 90) -> None:
    deadline = asyncio.get_running_loop().time() + within
    last = (0, 0)
    while asyncio.get_running_loop().time() < deadline:
        last = await applied_total(http, url)
        if last[0] >= applied and last[1] >= duplicate:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"worker applied {last}, wanted ({applied}, {duplicate}) within {within}s")


def assert_figures(body: dict[str, Any], villages: dict[str, str], reached: set[str], by_township: dict[str, int]):
    assert body["code"] == COUNTY and body["level"] == "county"
    assert body["villages_total"] == len(villages)
    assert body["villages_reached"] == len(reached)
    assert body["coverage_rate"] == round(len(reached) / len(villages), 6)
    townships = {c["code"]: c for c in body["children"]}
    assert set(townships) == set(villages.values())
    for code, child in townships.items():
        assert child["villages_total"] == sum(1 for t in villages.values() if t == code)
        assert child["villages_reached"] == by_township.get(code, 0), code


async def test_posted_scans_become_exact_coverage_through_repeats_and_a_killed_worker(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    rng = random.Random(140322)
    villages = administrative_villages(COUNTY)
    units = county_units(COUNTY)
    assert len(villages) == 277 and len(units) == 288  # the registry README's figures for 盂县

    # 1. Post scans; the figures converge to the reference.
    first = make_events(rng, units, 0, 1500)
    assert await post_all(http, stack.ingest, first) == 1500
    await wait_for(http, stack.coverage, 1500, 0)
    reached, by_township = expected_figures(first, villages)
    body = await coverage(http, stack.coverage)
    assert_figures(body, villages, reached, by_township)
    assert 0 < len(reached) < len(villages)  # the test means something only if it is partial
    national = (await http.get(f"{stack.coverage}/v1/coverage")).json()
    assert national["villages_reached"] == len(reached)

    # 2. The carrier sends everything again: accepted (202), counted nowhere.
    assert await post_all(http, stack.ingest, first) == 1500
    await wait_for(http, stack.coverage, 1500, 1500)
    assert await coverage(http, stack.coverage) == body

    # 3. More scans flow while the worker is killed with SIGKILL and restarted, twice.
    second = make_events(rng, units, 1500, 3000)
    posting = asyncio.create_task(post_all(http, stack.ingest, second, size=100, pause=0.3))
    for kill_after in (1500 + rng.randint(100, 600), 1500 + rng.randint(1200, 2000)):
        await wait_for(http, stack.coverage, kill_after, 1500)  # the worker is mid-stream
        stack.worker.kill()  # SIGKILL: no flush, no commit, no goodbye to the group
        stack.start_worker()
    assert await posting == 3000
    await wait_for(http, stack.coverage, 4500, 1500)
    await asyncio.sleep(1)  # let any replay after the restart land, then check it changed nothing
    assert await applied_total(http, stack.coverage) == (4500, 1500)
    reached, by_township = expected_figures(first + second, villages)
    assert_figures(await coverage(http, stack.coverage), villages, reached, by_township)

    # 4. A village's own page agrees.
    some = sorted(reached)[0]
    village = (await http.get(f"{stack.coverage}/v1/villages/{some}")).json()
    assert village["reached"] is True
    mine = [e for e in first + second if e["location_code"] == some]
    assert sum(village["counts"]["by_event_type"].values()) == len(mine)
    assert village["counts"]["by_carrier"] == {"sf": len(mine)}


async def carrier_corrections(http: httpx.AsyncClient, url: str) -> dict[str, dict[str, Any]]:
    r = await http.get(f"{url}/v1/scans/corrections", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return {d["event_id"]: d for d in r.json()["corrections"]}


async def test_corrections_take_events_out_of_every_figure_in_any_order_through_a_killed_worker(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    rng = random.Random(2023)
    villages = administrative_villages(COUNTY)
    events = make_events(rng, sorted(villages), 0, 300)
    assert await post_all(http, stack.ingest, events) == 300
    await wait_for(http, stack.coverage, 300, 0)
    before = await coverage(http, stack.coverage)

    reaches: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["event_type"] in REACH:
            reaches.setdefault(e["location_code"], []).append(e)
    only = next(code for code, es in sorted(reaches.items()) if len(es) == 1)  # reached by one scan only
    twice = next(code for code, es in sorted(reaches.items()) if len(es) >= 2)
    unreached = sorted(set(villages) - set(reaches))
    fresh, late = unreached[0], unreached[1]
    now = datetime.now(UTC).isoformat()
    replacement = {**reaches[only][0], "event_id": "e2e-r1", "location_code": fresh, "occurred_at": now}
    latecomer = {**reaches[only][0], "event_id": "e2e-late", "location_code": late, "occurred_at": now}
    altered = {**reaches[twice][1], "occurred_at": now}  # not the event that was accepted under this id
    corrections = [
        {"event": reaches[only][0], "reason": "scanned at the wrong village", "replacement": replacement},
        {"event": reaches[twice][0], "reason": "test batch sent to production"},
        {"event": latecomer, "reason": "withdrawn before it arrived"},
        {"event": altered, "reason": "a withdrawal that does not match"},
    ]
    carrier = {"Authorization": f"Bearer {TOKEN}"}
    r = await http.post(f"{stack.ingest}/v1/scans/corrections", json={"corrections": corrections}, headers=carrier)
    assert r.status_code == 202 and r.json()["accepted"] == 4, r.text
    stack.worker.kill()  # SIGKILL with the corrections in the topic, decided or not
    stack.start_worker()
    assert await post_all(http, stack.ingest, [latecomer]) == 1  # the original after its withdrawal

    deadline = asyncio.get_running_loop().time() + 90
    while True:
        listed = await carrier_corrections(http, stack.ingest)
        decided = {eid: d["status"] for eid, d in listed.items()}
        if decided.get("e2e-late") == "withdrawn" and len(decided) == 4:
            break
        assert asyncio.get_running_loop().time() < deadline, listed
        await asyncio.sleep(0.5)
    assert decided == {
        reaches[only][0]["event_id"]: "withdrawn",
        reaches[twice][0]["event_id"]: "withdrawn",
        "e2e-late": "withdrawn",
        reaches[twice][1]["event_id"]: "rejected",
    }
    assert "differs" in listed[reaches[twice][1]["event_id"]]["detail"]
    await wait_for(http, stack.coverage, 302, 0)  # the replacement and the latecomer were applied too

    # The figures are those of the surviving events, counted here from them.
    gone = {reaches[only][0]["event_id"], reaches[twice][0]["event_id"], "e2e-late"}
    survivors = [e for e in [*events, replacement, latecomer] if e["event_id"] not in gone]
    reached, by_township = expected_figures(survivors, villages)
    after = await coverage(http, stack.coverage)
    assert_figures(after, villages, reached, by_township)
    assert after["villages_reached"] == before["villages_reached"]  # one village lost, one gained
    page = (await http.get(f"{stack.coverage}/v1/villages/{only}")).json()
    assert page["reached"] is False
    mine = [e for e in survivors if e["location_code"] == only]
    assert sum(page["counts"]["by_event_type"].values()) == len(mine)

    # Withdrawing again is refused at once, naming the withdrawal; regulators see every correction, CSV too.
    r = await http.post(f"{stack.ingest}/v1/scans/corrections", json={"corrections": corrections[:1]}, headers=carrier)
    assert r.status_code == 422 and "already has a withdrawal" in r.text, r.text
    r = await http.get(f"{stack.coverage}/v1/corrections", params={"region": COUNTY})
    assert r.status_code == 200 and r.json()["total"] == 4, r.text
    csv_rows = (await http.get(f"{stack.coverage}/v1/corrections", params={"region": COUNTY, "format": "csv"})).text
    assert len(csv_rows.strip().splitlines()) == 5, csv_rows
