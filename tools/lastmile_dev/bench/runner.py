"""`lastmile bench`: start the stack, run the scenarios in order, print the table, write the results JSON.

One generator serves every scenario that posts into the stack, so each can check its figures exactly. A scenario that
fails is reported as such and the run goes on; the stack is always stopped at the end.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from lastmile.registry import BUNDLED, Registry, read_registry
from lastmile.settings import Settings
from lastmile_dev.bench import medians, posting, report
from lastmile_dev.bench.core import REPEATED, SCENARIOS, Config, Context, Figure, Result
from lastmile_dev.bench.exact import wait_applied
from lastmile_dev.bench.generator import PROBE_CARRIER, Generator
from lastmile_dev.bench.stack import BenchStack
from lastmile_dev.devstack import StackError

SAMPLE_REGISTRY: Final = BUNDLED["sample"]
WARM_UP_EVENTS: Final = 50


class Display:
    """A live progress display: one bar per ``what`` a scenario reports, cleared when the scenario ends."""

    def __init__(self, console: Console, live: bool) -> None:
        self.console = console
        self.live = live
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TimeElapsedColumn(),
            console=console,
            disable=not live,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}

    def progress(self, what: str, done: float, total: float) -> None:
        task = self.tasks.get(what)
        if task is None:
            task = self.tasks[what] = self.bar.add_task(what, total=total)
        self.bar.update(task, completed=done, total=total)

    def clear(self) -> None:
        for task in self.tasks.values():
            self.bar.remove_task(task)
        self.tasks.clear()

    def say(self, text: str) -> None:
        if self.live:
            self.console.print(text)


@dataclass
class BenchRun:
    results: list[Result]
    path: Path
    payload: dict[str, Any]
    settings: Settings
    generator: Generator
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.exact is not False for r in self.results)


def selected(names: Sequence[str] | None) -> list[str]:
    """The scenarios to run, in the harness's order; raises ValueError naming an unknown one."""
    if not names:
        return list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    return [n for n in SCENARIOS if n in names]


def scenario_module(name: str) -> Any | None:
    """The scenario's module, or None when this tree does not have it."""
    module = f"lastmile_dev.bench.{name}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


@dataclass
class _Run:
    """One run's state, saved as the results JSON after every scenario, so an interrupted run keeps its figures."""

    config: Config
    names: list[str]
    out_dir: Path
    registry_dir: Path
    registry: Registry
    generator: Generator
    bench: BenchStack
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished: datetime | None = None
    errors: list[str] = field(default_factory=list)
    results: dict[str, Result] = field(default_factory=dict)
    redis_server: dict[str, Any] = field(default_factory=dict)

    def ordered(self) -> list[Result]:
        return [self.results[n] for n in SCENARIOS if n in self.results]

    def payload(self) -> dict[str, Any]:
        registry = self.registry
        return {
            "started_at": self.started.isoformat(),
            "finished_at": self.finished.isoformat() if self.finished else None,
            "scenarios": self.names,
            "errors": self.errors,
            "machine": report.machine(),
            "versions": report.versions(
                self.redis_server.get("server", {}), "external" if self.bench.kafka else "embedded Tansu"
            ),
            "settings": report.settings_record(self.bench.settings),
            "config": report.config_record(self.config),
            "registry": {
                "dir": str(self.registry_dir),
                "units": sum(1 for _ in registry.units()),
                **registry.kind_counts,
            },
            "generator": _generator_record(self.generator),
            "redis_memory_at_end": self.redis_server.get("memory", {}),
            "workdir": str(self.bench.workdir),
            "results": [_result_record(r) for r in self.ordered()],
        }

    def save(self) -> Path:
        return report.write(self.out_dir, self.payload(), self.started)


async def run_bench(
    config: Config,
    scenarios: Sequence[str] | None = None,
    out_dir: Path = Path("bench-results"),
    *,
    kafka: str | None = None,
    redis: str | None = None,
    console: Console | None = None,
    live: bool = True,
) -> BenchRun:
    names = selected(scenarios)
    display = Display(console or Console(stderr=True), live)
    registry_dir = config.registry_dir or SAMPLE_REGISTRY
    registry = await asyncio.to_thread(read_registry, registry_dir)
    generator = Generator(registry, config.seed)
    run_id = f"{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:4]}"
    bench = BenchStack(out_dir / f"run-{run_id}", [*generator.carriers, PROBE_CARRIER], kafka=kafka, redis=redis)
    run = _Run(config, names, out_dir, registry_dir, registry, generator, bench)
    with display.bar:
        try:
            ctx = await _start(run, run_id, display)
            for name in names:
                module = scenario_module(name)
                if module is None:
                    if scenarios:
                        run.errors.append(f"{name}: tools/lastmile_dev/bench/{name}.py is not in this tree")
                    display.say(f"[dim]{name}: not in this tree, skipped[/]")
                    continue
                runs = run.config.runs if name in REPEATED else 1
                done: list[Result] = []
                for i in range(runs):
                    label = f"{name} (run {i + 1} of {runs})" if runs > 1 else name
                    done.append(await _run_one(name, module, ctx, display, run.errors, label))
                    run.results[name] = medians.combine(done)  # what the next run and scenario read
                    run.save()
                if name == "registry_load":
                    await _after_registry_load(bench.settings, registry, display)
                    await _warm_up(ctx)
                    display.clear()
                dead = [p.name for p in bench.processes() if not p.alive()]
                if dead:
                    run.errors.append(f"after {name}: {', '.join(dead)} not running (logs in {bench.logs})")
                run.save()
            run.redis_server = await _redis_info(bench.settings)
        except Exception as exc:
            run.errors.append(f"harness: {exc!r}")
            display.say(f"[red]harness error[/]: {exc}")
        finally:
            await asyncio.to_thread(bench.close)
            run.finished = datetime.now(UTC)
            path = run.save()
    return BenchRun(run.ordered(), path, run.payload(), bench.settings, generator, run.errors)


async def _start(run: _Run, run_id: str, display: Display) -> Context:
    """Broker, Redis, topics, the registry (unless its scenario loads it), the services, a warm-up batch."""
    from lastmile.topics import ensure_topics

    settings = await asyncio.to_thread(run.bench.start_infra, run_id)
    await ensure_topics(settings)
    if "registry_load" not in run.names:
        await _load_registry(settings, run.registry, display)
    display.progress("starting ingest, coverage API and worker", 0, 1)
    await run.bench.start_services()
    ctx = Context(
        run.config,
        run.bench.stack,
        display.progress,
        registry=run.registry,
        generator=run.generator,
        results=run.results,
    )
    if "registry_load" not in run.names:  # else after it: no event is valid before the registry is in
        await _warm_up(ctx)
    display.clear()
    return ctx


async def _run_one(name: str, module: Any, ctx: Context, display: Display, errors: list[str], label: str) -> Result:
    display.say(f"[bold]{label}[/] …")
    started = time.monotonic()
    try:
        result: Result = await module.run(ctx)
    except Exception as exc:
        errors.append(f"{name}: {exc!r}")
        result = Result(
            name,
            [Figure("error", None, "", "", False, note=f"{type(exc).__name__}: {exc}"[:300])],
            samples={"traceback": traceback.format_exc()},
            exact=False,
        )
    result.samples.setdefault("scenario_seconds", time.monotonic() - started)
    display.clear()
    shown = "; ".join(f"{f.name} {report.number(f.value, f.unit)}" for f in result.figures[:2])
    display.say(f"  {label}: {shown}")
    return result


async def _warm_up(ctx: Context) -> None:
    """One small batch through the whole pipeline, applied, before anything is measured.

    A worker that has joined its group may still wait out a stopped worker's session before it gets
    partitions; the only sure sign that the pipeline runs is an event going all the way through."""
    assert ctx.generator is not None
    ctx.progress("warm-up: one batch through the pipeline", 0, 1)
    redis = aioredis.from_url(ctx.stack.settings.redis_url, decode_responses=True)
    try:
        async with posting.client() as http:
            await posting.Poster(ctx.stack, http).post(ctx.generator.next_batch(WARM_UP_EVENTS))
        done_at, count = await wait_applied(redis, ctx.stack.settings.redis_key_prefix, ctx.generator.events_distinct)
    finally:
        await redis.aclose()
    if done_at is None:
        raise StackError(f"the warm-up batch was not applied ({count} of {ctx.generator.events_distinct} events)")
    ctx.progress("warm-up: one batch through the pipeline", 1, 1)


async def _load_registry(settings: Settings, registry: Registry, display: Display) -> None:
    from coverage_service.readmodel.registry_store import load_registry

    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        await load_registry(
            client,
            settings.redis_key_prefix,
            registry,
            progress=lambda done, total: display.progress("loading the registry", done, total),
            population_tiers=settings.population_tiers,
        )
    finally:
        await client.aclose()
    display.clear()


async def _after_registry_load(settings: Settings, registry: Registry, display: Display) -> None:
    """Make sure the registry is in, whatever the scenario did. The services are not restarted: they read
    the registry from Redis, as after an operator's load, and the warm-up that follows proves it."""
    from coverage_service.readmodel.registry_store import registry_loaded

    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        loaded = await registry_loaded(client, settings.redis_key_prefix)
    finally:
        await client.aclose()
    if not loaded:
        await _load_registry(settings, registry, display)


async def _redis_info(settings: Settings) -> dict[str, Any]:
    client = aioredis.from_url(settings.redis_url, decode_responses=True)
    try:
        return {"server": await client.info("server"), "memory": await client.info("memory")}
    except Exception as exc:
        return {"error": repr(exc)}
    finally:
        await client.aclose()


def _generator_record(generator: Generator) -> dict[str, Any]:
    expected = generator.expected()
    reached = expected.pop("villages_reached")
    return {**expected, "villages_reached_national": reached.get("CN", 0)}


def _result_record(result: Result) -> dict[str, Any]:
    return {
        "scenario": result.scenario,
        "exact": result.exact,
        "figures": [
            {
                "name": f.name,
                "value": f.value,
                "unit": f.unit,
                "target": f.target,
                "met": f.met,
                "baseline": f.baseline,
                "baseline_name": f.baseline_name,
                "ratio": report.ratio(f),
                "note": f.note,
            }
            for f in result.figures
        ],
        "samples": result.samples,
    }


def main(config: Config, scenarios: Sequence[str] | None, out_dir: Path) -> int:
    """The CLI's entry: run, print the table and where the JSON went; 1 if a scenario failed or was inexact."""
    console = Console()
    if not console.is_terminal:  # a log file: a table as wide as it needs
        console = Console(width=180)

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        run = asyncio.run(run_bench(config, scenarios, out_dir, console=Console(stderr=True)))
    except KeyboardInterrupt:
        console.print("interrupted; the stack is stopped")
        return 130
    console.print(report.table(run.results))
    for line in report.notes(run.results):
        console.print(f"  [dim]{line}[/]", highlight=False)
    for error in run.errors:
        console.print(f"[red]error[/] {error}")
    inexact = [r.scenario for r in run.results if r.exact is False]
    if inexact:
        console.print(f"[red]figures not exact[/]: {', '.join(inexact)}")
    console.print(f"results: {run.path} (and {run.path.parent / 'latest.json'})")
    return 0 if run.ok else 1
