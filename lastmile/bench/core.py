"""What every benchmark scenario shares: its configuration, the stack it runs on, and what it reports.

A scenario is ``async def run(ctx: Context) -> Result``. It reports figures, each beside the target of
the issue and, where the issue asks for one, a baseline measured in the same run, and keeps its raw
samples for the results JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lastmile.settings import Settings


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

    @classmethod
    def quick_run(cls, registry_dir: Path | None = None) -> Config:
        return cls(quick=True, duration_seconds=3.0, batch_size=500, api_clients=8, api_seconds=2.0,
                   memory_events=5_000, registry_dir=registry_dir)  # fmt: skip


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
    """The running services a scenario drives (started by the runner; see lastmile.bench.stack)."""

    settings: Settings
    ingest_url: str
    coverage_url: str
    carrier_tokens: dict[str, str]  # carrier -> token
    regulator_token: str  # national
    workdir: Path
    start_worker: Callable[[], Any]  # starts one more worker process, returns it (has .stop())
    stop_workers: Callable[[], None]


@dataclass
class Context:
    config: Config
    stack: Stack
    progress: Callable[[str, float, float], None]  # (what, done, total): drives the progress display
