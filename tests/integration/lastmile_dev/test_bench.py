"""The bench harness, run small (a few thousand events) against the real broker and Redis.

Benchmarks are not timed tests: nothing here judges a figure's size. What is checked is that the harness
works end to end (every scenario present in the tree runs and reports its figures, the results JSON is
written) and that what it reports is exact: each scenario's own exactness check passed, and, read back
here from Redis, the events applied and the villages reached in every county equal the generator's count.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from lastmile import names
from lastmile.registry import BUNDLED, read_registry
from lastmile_dev.bench import cpu
from lastmile_dev.bench.core import Config
from lastmile_dev.bench.runner import SCENARIOS, run_bench, scenario_module
from tests.support import stored

pytestmark = pytest.mark.integration

SAMPLE = BUNDLED["sample"]
OURS = ("throughput", "freshness", "scaling", "cluster")


async def test_a_quick_bench_runs_every_scenario_and_reports_exact_figures(
    broker_url: str, redis_url: str, tmp_path: Path
) -> None:
    run = await run_bench(Config.quick_run(), None, tmp_path, kafka=broker_url, redis=redis_url, live=False)

    assert run.errors == []
    present = [n for n in SCENARIOS if scenario_module(n) is not None]
    assert [r.scenario for r in run.results] == present
    assert set(OURS) <= set(present)
    for result in run.results:
        assert result.figures, result.scenario
        assert all(f.name != "error" for f in result.figures), (result.scenario, result.figures)
        # Every scenario that checks its figures against the generator found them exact.
        assert result.exact is not False, (result.scenario, result.samples.get("exactness"))
    by_name = {r.scenario: r for r in run.results}
    for name in OURS:
        assert by_name[name].exact is True, (name, by_name[name].samples.get("exactness"))
    assert by_name["throughput"].samples["sustained_events_per_s"] > 0
    assert by_name["throughput"].samples["redis_commands_per_event"]["evalsha"][0] > 0  # the apply script ran
    assert by_name["freshness"].samples["probe_latency_ms"]
    assert [p["workers"] for p in by_name["scaling"].samples["phases"]] == [1, 2]
    opened = by_name["api_load"].samples["open_loop"]
    assert opened["completed"] == opened["due"] > 0 and opened["statuses"] == {"200": opened["due"]}
    assert by_name["api_load"].samples["empty"]["requests"] > 0  # the empty read model's API answered too
    shares = by_name["cluster"].samples["share_per_master"]
    assert len(shares) == 3 and abs(sum(shares.values()) - 1) < 1e-9

    # Read back independently: the stack's read model holds exactly the generator's distinct events.
    expected = run.generator.expected()
    registry = read_registry(SAMPLE)
    prefix = run.settings.redis_key_prefix
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        counters = await stored.stats(client, prefix)
        applied, duplicates = counters.get(names.stat.EVENTS_APPLIED), counters.get(names.stat.EVENTS_DUPLICATE)
        # The memory scenario ran last: the dedup memory it measured holds one digest per event applied.
        assert by_name["memory"].samples["dedup"]["digests"] == int(applied or 0) > 0
        counties = {
            u.code: int(await client.hget(names.key(prefix, names.REGION, u.code), "villages_reached") or 0)
            for u in registry.counties
        }
    finally:
        await client.aclose()
    assert int(applied or 0) == expected["events_distinct"]
    assert int(duplicates or 0) >= 1  # the generator re-sent some events, and they were dropped
    assert counties == {u.code: expected["villages_reached"].get(u.code, 0) for u in registry.counties}
    assert sum(counties.values()) == expected["villages_reached"]["CN"] > 0

    # The results JSON: written twice, with the machine, versions, settings and every result's samples.
    written = orjson.loads(run.path.read_bytes())
    assert written == orjson.loads((tmp_path / "latest.json").read_bytes())
    assert {"machine", "versions", "settings", "config", "results", "started_at", "finished_at"} <= set(written)
    assert written["versions"]["redis_server"]["redis_version"]
    assert [r["scenario"] for r in written["results"]] == present
    assert all("samples" in r for r in written["results"])


async def test_repeated_runs_are_reported_as_medians_and_stay_exact(
    broker_url: str, redis_url: str, tmp_path: Path
) -> None:
    config = dataclasses.replace(Config.quick_run(), runs=3)
    run = await run_bench(config, ["throughput"], tmp_path, kafka=broker_url, redis=redis_url, live=False)

    assert run.errors == []
    (result,) = run.results
    rates = [r["sustained_events_per_s"] for r in result.samples["runs"]]
    assert len(rates) == 3 and result.samples["median_of_runs"] == 3
    assert result.figures[0].value == sorted(rates)[1]  # the middle run's rate, whole
    assert result.figures[0].note.startswith("median of 3 runs (")
    assert result.exact is True
    # All three runs posted into one read model, and it holds exactly the generator's distinct events.
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        applied = (await stored.stats(client, run.settings.redis_key_prefix)).get(names.stat.EVENTS_APPLIED)
    finally:
        await client.aclose()
    assert int(applied or 0) == run.generator.expected()["events_distinct"]
    # Each run's own distinct events, plus the warm-up batch, are all of them.
    posted = sum(r["events_distinct"] for r in result.samples["runs"])
    assert 0 < posted < int(applied)


async def test_command_stats_are_read_from_a_real_redis(redis_url: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        before = await cpu.redis_command_stats(client)
        await client.set("bench:probe", "1")
        after = await cpu.redis_command_stats(client)
    finally:
        await client.aclose()
    assert after["set"][0] == before.get("set", (0, 0))[0] + 1
