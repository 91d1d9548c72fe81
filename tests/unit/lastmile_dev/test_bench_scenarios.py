"""The pure parts of the baseline, API-load, registry-load and memory scenarios (no broker, no Redis)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lastmile import divisions
from lastmile.registry import BUNDLED, read_registry
from lastmile.settings import Settings
from lastmile.topics import Partitioner, partition_for
from lastmile_dev.bench import api_load, core, cpu, memory, naive, registry_load, streams, throughput
from lastmile_dev.bench.core import Config, Context, Figure, Result, Stack

SAMPLE = BUNDLED["sample"]


# -- api_load ---------------------------------------------------------------------------------------------


def test_url_mix_has_the_proportions_and_the_right_paths() -> None:
    paths = api_load.url_mix(["14", "15"], ["140322"], ["140322205206", "140322100200"], 1000, seed=1)
    kinds = Counter(
        "national" if p == "/v1/coverage" else "village" if p.startswith("/v1/villages/") else f"len{len(p) - 13}"
        for p in paths
    )
    assert kinds == {"national": 100, "len2": 200, "len6": 400, "village": 300}
    assert set(paths) >= {"/v1/coverage", "/v1/coverage/14", "/v1/coverage/140322", "/v1/villages/140322205206"}


def test_url_mix_is_shuffled_and_repeatable() -> None:
    first = api_load.url_mix(["14"], ["140322"], ["140322205206"], 200, seed=7)
    assert first == api_load.url_mix(["14"], ["140322"], ["140322205206"], 200, seed=7)
    assert first != sorted(first)


def test_url_mix_refuses_an_empty_level() -> None:
    with pytest.raises(ValueError, match="no county"):
        api_load.url_mix(["14"], [], ["140322205206"], 10, seed=1)


def test_registry_paths_query_administrative_villages_only() -> None:
    registry = read_registry(SAMPLE)
    kinds = {u.code: u.kind for u in registry.villages}
    paths = api_load.registry_paths(registry, 500, seed=3)
    villages = [p.rsplit("/", 1)[1] for p in paths if p.startswith("/v1/villages/")]
    assert villages and all(kinds[code] == "village" for code in villages)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert core.percentile(values, 50) == 50.0
    assert core.percentile(values, 99) == 99.0
    assert core.percentile(values, 99.9) == 100.0
    assert core.percentile(values, 100) == 100.0
    assert core.percentile([3.0], 99) == 3.0


def test_only_2xx_and_304_are_not_errors() -> None:
    assert [api_load.is_error(s) for s in (200, 204, 304, 301, 401, 429, 500)] == [
        False,
        False,
        False,
        True,
        True,
        True,
        True,
    ]


def test_wrk_result_line_is_parsed_with_statuses_summed_over_threads() -> None:
    line = (
        api_load.RESULT_MARK + '{"requests": 9000, "duration_us": 3000000, "p50": 1500, "p75": 2000, "p90": 3000, '
        '"p99": 12000, "p99.9": 20000, "max": 45000, "mean": 1800.5, "connect": 0, "read": 1, "write": 0, '
        '"timeout": 2, "statuses": [{"200": 4000, "404": 1}, {"200": 4996}]}'
    )
    run = api_load.parse_wrk(f"Running 3s test\n{line}\n")
    assert run.tool == "wrk" and run.rps == 3000.0
    assert run.percentiles_ms[50.0] == 1.5 and run.percentiles_ms[99.0] == 12.0 and run.max_ms == 45.0
    assert run.statuses == {200: 8996, 404: 1}
    assert run.socket_errors == 3 and run.errors == 4


def test_wrk_output_without_a_result_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no result"):
        api_load.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_script_quotes_its_strings() -> None:
    script = api_load.wrk_script(Path('/tmp/a "b"/paths.txt'), 'tok"en\\')
    assert 'io.lines("/tmp/a \\"b\\"/paths.txt")' in script
    assert 'wrk.headers["Authorization"] = "Bearer tok\\"en\\\\"' in script
    assert api_load.RESULT_MARK in script and "%%" not in script


# -- registry_load ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("东梁村委会", "village"),
        ("东梁村民委员会", "village"),
        ("新华社区村委会", "village"),
        ("新华村社区居委会", "community"),
        ("城关居民委员会", "community"),
        ("幸福社区", "community"),
        ("下庄村", "village"),
        ("巴音嘎查", "village"),
        ("国营农场", "other"),
    ],
)
def test_kind_follows_the_readme_rule_on_names(name: str, kind: str) -> None:
    assert registry_load.kind_of(name) == kind


def test_an_explicit_kind_overrides_the_name() -> None:
    assert registry_load.kind_of("下庄村", "community") == "community"
    assert registry_load.kind_of("下庄村", "  ") == "village"


@given(st.text(alphabet="村委会民员居社区嘎查农场东", max_size=8))
def test_the_independent_rule_agrees_with_the_pipeline(name: str) -> None:
    assert registry_load.kind_of(name) == divisions.classify(name)


def test_counting_the_csv_agrees_with_the_registry_reader() -> None:
    assert dict(registry_load.count_kinds(SAMPLE)) == {k: n for k, n in read_registry(SAMPLE).kind_counts.items() if n}


def test_scratch_url_keeps_the_server_and_changes_the_database() -> None:
    assert registry_load.scratch_url("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/15"
    assert registry_load.scratch_url("rediss://u:p@host:6379?ssl_cert_reqs=none") == (
        "rediss://u:p@host:6379/15?ssl_cert_reqs=none"
    )
    assert registry_load.scratch_url("unix:///run/redis.sock") is None


# -- memory -----------------------------------------------------------------------------------------------


def test_records_are_ingest_batches_one_per_partition_in_order() -> None:
    events = [
        {"event_id": f"e{i}", "location_code": code} for i, code in enumerate(["140322205206", "140322100200"] * 5)
    ]
    records = memory.records_of(events, Partitioner(8), "2026-11-22T00:00:00.000Z")
    seen: list[str] = []
    for partition, value in records.items():
        body = orjson.loads(value)
        assert body["received_at"] == "2026-11-22T00:00:00.000Z"
        assert {partition_for(e["location_code"], 8) for e in body["events"]} == {partition}
        seen += [e["event_id"] for e in body["events"]]
        ids = [int(e["event_id"][1:]) for e in body["events"]]
        assert ids == sorted(ids)
    assert sorted(seen) == sorted(e["event_id"] for e in events)


def test_partitioner_is_kafkas_murmur2() -> None:
    partition_of = Partitioner(8)
    codes = [u.code for u in read_registry(SAMPLE).villages[:50]]
    assert [partition_of(c) for c in codes * 2] == [partition_for(c, 8) for c in codes * 2]


def _dedup(ttl_min: int | None, ttl_max: int | None, total: int = 1_500, digests: int = 100) -> dict[str, object]:
    return {
        "keys": 3,
        "digests": digests,
        "bytes_total": total,
        "bytes_per_event": total / digests,
        "ttl_min_s": ttl_min,
        "ttl_max_s": ttl_max,
    }


@pytest.mark.parametrize(
    ("ttl_min", "ttl_max", "bounded"),
    [(3000, 7200, True), (-1, 3600, False), (3000, 7300, False), (None, None, False)],
)
def test_dedup_memory_is_bounded_only_when_every_key_expires_within_the_window_and_its_hour(
    ttl_min: int | None, ttl_max: int | None, bounded: bool
) -> None:
    figures = memory._figures(2_000, 1_000, 10, 100, 500, "a test", _dedup(ttl_min, ttl_max), 3600, 10, 10)
    by_name = {f.name: f for f in figures}
    assert by_name["dedup memory bounded by the window"].met is bounded
    assert by_name["memory per event applied"].value == 100.0
    assert by_name["registry memory per unit"].value == 5.0


@pytest.mark.parametrize(("total", "met"), [(1_600, True), (1_601, False)])
def test_dedup_bytes_per_event_meet_the_target_at_16_and_hours_per_gib_follow(total: int, met: bool) -> None:
    figures = memory._figures(2_000, 1_000, 10, 100, 500, "a test", _dedup(1, 2, total=total), 3600, 10, 10)
    by_name = {f.name: f for f in figures}
    assert by_name["dedup memory per event in the window"].met is met
    hours = by_name["dedup: hours of the national average rate (4,000 events/s) per GiB"].value
    assert hours == pytest.approx(2**30 / (total / 100 * 4_000 * 3_600))


# -- naive ------------------------------------------------------------------------------------------------


def test_naive_counts_per_county_under_its_own_prefix() -> None:
    assert naive.counter_key("bench-x-naive-1", "140322205206") == "bench-x-naive-1:{14}:region:140322"


def _context(results: dict[str, Result]) -> Context:
    stack = Stack(Settings(), "", "", {}, "", Path("."), lambda *_: None, lambda: None)
    return Context(Config.quick_run(), stack, lambda *_: None, results=results)


def test_the_ratio_uses_the_throughput_scenarios_sustained_rate() -> None:
    figure = Figure("sustained end-to-end throughput", 45_000.0, "events/s", "", None)
    assert naive._optimized(_context({})) is None
    assert naive._optimized(_context({"throughput": Result("throughput", [figure])})) == 45_000.0
    with_sample = Result("throughput", [figure], {"sustained_events_per_s": 51_000.5})
    assert naive._optimized(_context({"throughput": with_sample})) == 51_000.5


# -- CPU per event ------------------------------------------------------------------------------------------


def test_the_cpu_table_gives_microseconds_per_event_and_cores_for_the_planned_rate() -> None:
    usage = cpu.Usage({"redis": 0.5, "worker": 2.0, "ingest": 1.5})
    figures = {f.name: f for f in throughput._cpu_figures(usage, 100_000, 2.5)}
    assert figures["Redis CPU per applied event"].value == pytest.approx(5.0)
    assert figures["Redis CPU per applied event"].met is True
    assert "one snapshot of the read model after that (2.5 s)" in figures["Redis CPU per applied event"].note
    assert figures["CPU per event: worker"].value == pytest.approx(20.0)
    assert figures["CPU per event: worker"].note.startswith("2.0 cores for 100,000 events/s")
    slow = {f.name: f for f in throughput._cpu_figures(cpu.Usage({"redis": 1.1}), 100_000, 2.5)}
    assert slow["Redis CPU per applied event"].met is False


def test_redis_commands_are_ranked_by_their_microseconds_per_event() -> None:
    usage = cpu.Usage({"redis": 1.0}, {"hset": (3_000, 20_000), "evalsha": (10, 90_000), "get": (0, 0)})
    per_event = usage.redis_commands_per_event(1_000)
    assert list(per_event) == ["evalsha", "hset"]  # busiest first, unused commands left out
    assert per_event["hset"] == pytest.approx((3.0, 20.0))
    figures = {f.name: f for f in throughput._cpu_figures(usage, 1_000, 0.1)}
    assert figures["Redis µs per event in scripts (evalsha)"].value == pytest.approx(90.0)
    assert "hset 20.0 µs (3.00 calls)" in figures["Redis µs per event in scripts (evalsha)"].note
    # 10 calls for 90 ms of Redis: each held it 9 ms, for 100 events.
    held = figures["Redis held per script call (mean)"]
    assert held.value == pytest.approx(9.0)
    assert "100 events each" in held.note


def test_a_process_group_cpu_is_read_from_proc() -> None:
    spent = cpu.group_cpu_seconds(os.getpgrp())
    sum(i * i for i in range(300_000))  # burn a little
    assert cpu.group_cpu_seconds(os.getpgrp()) >= spent > 0


# -- streams ----------------------------------------------------------------------------------------------


def test_each_stream_is_timed_from_the_change_to_its_first_event_showing_it_or_a_later_value() -> None:
    prompt, late, behind = streams.Watch(), streams.Watch(), streams.Watch()
    prompt.first_seen = {1: 0.0, 2: 10.1, 3: 20.05}
    late.first_seen = {1: 0.0, 3: 20.9}  # skipped 2: its event showing 3 delivers 2 as well
    behind.first_seen = {1: 0.0, 2: 10.5}  # never showed 3
    delays, undelivered = streams._delays([prompt, late, behind], {2: 10.0, 3: 20.0})
    assert sorted(round(d) for d in delays) == [50, 100, 500, 900, 10900]
    assert undelivered == 1
