"""What every benchmark scenario shares: its configuration, the stack it runs on, and what it reports.

A scenario is ``async def run(ctx: Context) -> Result``. It reports figures, each beside the target of
the issue and, where the issue asks for one, a baseline measured in the same run, and keeps its raw
samples for the results JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from lastmile.settings import Settings

if TYPE_CHECKING:
    from lastmile.registry import Registry
    from lastmile_dev.bench.generator import Generator


# In this order: registry_load first, since it loads the registry the others need.
SCENARIOS: Final = [
    "registry_load",
    "throughput",
    "naive",
    "freshness",
    "api_load",
    "streams",
    "dashboard",
    "components",
    "scaling",
    "cluster",
    "memory",
]
# Timed scenarios, run Config.runs times each and reported as medians. The registry load runs once (it loads
# the stack's registry), and so do cluster (a share of CPU; it folds the whole topic), memory (bytes, not time;
# its 10 million events would dominate the run) and dashboard (the median of its own first loads). memory runs
# last: it reads the dedup digests of everything posted before it.
REPEATED: Final = frozenset({"throughput", "naive", "freshness", "api_load", "streams", "components", "scaling"})


@dataclass(frozen=True)
class Config:
    """How hard and how long: ``quick`` is the few-thousand-event run `make test` does."""

    quick: bool = False
    duration_seconds: float = 60.0  # sustained phases (throughput); the API load runs 30 s
    batch_size: int = 1000  # events per POST (the issue: 500-1000)
    api_clients: int = 64
    api_seconds: float = 30.0
    memory_events: int = 10_000_000
    registry_dir: Path | None = None  # the national registry; None = the bundled sample
    seed: int = 20261122
    max_events: int = 0  # most events the throughput phase posts (0: no limit, the duration decides)
    posters: int = 6  # concurrent HTTP posters of the throughput and freshness load
    # The throughput phase's load is built before it starts, for this many events/s over its duration (more than
    # ingest accepts here); should posting outrun it, the rest is made during the phase and the output says so.
    prebuilt_events_per_s: int = 40_000
    freshness_seconds: float = 30.0  # how long the steady half-rate load of the freshness scenario runs
    scaling_events: int = 600_000  # events preloaded into the topic for each worker-scaling phase
    runs: int = 3  # runs of each timed scenario (lastmile_dev.bench.medians): the table shows their medians

    @classmethod
    def quick_run(cls, registry_dir: Path | None = None) -> Config:
        return cls(
            quick=True,
            duration_seconds=3.0,
            batch_size=500,
            api_clients=8,
            api_seconds=2.0,
            memory_events=5_000,
            registry_dir=registry_dir,
            max_events=4_000,
            freshness_seconds=2.0,
            scaling_events=3_000,
            runs=1,
        )


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    target: str  # the target, as text ("≥ 50,000 events/s")
    met: bool | None  # None when there is no target to judge against
    baseline: float | None = None
    baseline_name: str = ""
    note: str = ""


@dataclass
class Result:
    scenario: str
    figures: list[Figure] = field(default_factory=list)
    samples: dict[str, Any] = field(default_factory=dict)  # raw samples, settings, anything worth keeping
    exact: bool | None = None  # whether the figures in Redis matched the generator's own count


@dataclass
class Stack:
    """The running services a scenario drives (started by the runner; see lastmile_dev.bench.stack)."""

    settings: Settings
    ingest_url: str
    coverage_url: str
    carrier_tokens: dict[str, str]  # carrier -> token
    regulator_token: str  # national
    workdir: Path
    # start_worker() starts one more worker process of this stack and returns it (a devstack.Proc: .stop());
    # start_worker(settings) starts one with other settings (its own topic, consumer group, key prefix).
    start_worker: Callable[..., Any]
    stop_workers: Callable[[], None]  # stops every worker start_worker started, the stack's own included
    # role ("ingest", "broker", "worker", "coverage") -> process group ids of the stack's processes of that role
    process_groups: Callable[[], dict[str, list[int]]] = field(default=lambda: {})


@dataclass
class Context:
    """What a scenario gets from the runner.

    ``generator`` is the run's one load generator: every scenario that posts into the stack's read model takes
    its events from it, so that ``generator.expected()`` stays the exact figure for everything in that read
    model and each scenario can check exactness after the ones before it. ``results`` holds the Result of each
    scenario already finished, by name (``results["throughput"].samples["sustained_events_per_s"]`` is the
    optimized pipeline's sustained rate, the naive baseline's counterpart).
    """

    config: Config
    stack: Stack
    progress: Callable[[str, float, float], None]  # (what, done, total): drives the progress display
    registry: Registry | None = None  # the registry the stack was loaded with (read once, ~3 s nationally)
    generator: Generator | None = None
    results: dict[str, Result] = field(default_factory=dict)


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0-100); NaN of none."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
