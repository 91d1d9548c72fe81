"""The development subcommands of `lastmile`: run (the local stack of `make run`), bench and soak."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lastmile.cli import STACK, command
from lastmile.registry import BUNDLED, locate
from lastmile.settings import Settings
from lastmile_dev.bench.core import SCENARIOS


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = command(
        sub, "run", _run, STACK, help="run everything locally: embedded broker, redis-server, the three services"
    )
    run.add_argument(
        "--registry",
        default="sample",
        help=f"registry to load at start: a folder, or {' or '.join(BUNDLED)} (default sample)",
    )
    run.add_argument("--data-dir", type=Path, default=Path(".run"), help="where Redis data, logs and tokens go")

    bench = command(
        sub,
        "bench",
        _bench,
        STACK,
        help="run the benchmark scenarios against a fresh local stack; print the table, write results JSON",
        description="Starts its own embedded broker and redis-server (or uses LASTMILE_KAFKA_BOOTSTRAP_SERVERS / "
        "LASTMILE_REDIS_URL), the services with bench tokens, runs the scenarios in order and prints each figure "
        "beside its target. "
        "A stack `make run` started is left alone.",
    )
    bench.add_argument(
        "--quick", action="store_true", help="a few thousand events on the bundled sample registry (unless --registry)"
    )
    bench.add_argument(
        "--scenarios",
        type=_scenarios,
        default=None,
        help=f"comma-separated, run in the harness's order (default all): {','.join(SCENARIOS)}",
    )
    bench.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="posting time of throughput")
    bench.add_argument(
        "--memory-events",
        type=int,
        default=None,
        metavar="N",
        help="events the memory scenario sends (default 10,000,000)",
    )
    bench.add_argument(
        "--runs",
        type=int,
        default=None,
        metavar="N",
        help="runs of each timed scenario, reported as medians (default 3; 1 with --quick)",
    )
    _add_stack_arguments(bench)

    soak = command(
        sub,
        "soak",
        _soak,
        STACK,
        help="post a steady load for minutes while killing and stopping services; check the figures are exact",
        description="Starts the local stack like `lastmile bench`, posts generator batches at a steady rate and "
        "injects a fault every few minutes in rotation (kill -9 the worker, SIGSTOP the broker for 10 s, restart "
        "Redis, kill -9 the coverage API), sampling counts, memory and lag every 10 s; at the end waits for the "
        "backlog and checks the figures exactly. Prints a table, writes OUT/soak-<time>.json.",
    )
    soak.add_argument("--minutes", type=_positive, default=30.0, help="how long to post (default 30)")
    soak.add_argument(
        "--rate",
        type=_positive,
        default=2500.0,
        metavar="EVENTS_PER_S",
        help="events/s to post (default 2,500: a fixed, conservative share of what one worker sustains; the "
        "issue's half of the sustained throughput is machine-specific, see `make bench`)",
    )
    soak.add_argument(
        "--fault-every-minutes", type=_positive, default=4.0, help="a fault this often, in rotation (default 4)"
    )
    _add_stack_arguments(soak)


def _add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """The registry and results folder of the commands that run the local stack under load (bench, soak)."""
    parser.add_argument(
        "--registry",
        default=None,
        help="registry: a folder, or a bundled name (default: national; sample with --quick)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")


def _registry(name: str | None, default: str) -> Path | None:
    folder = locate(name or default)
    if not folder.is_dir():
        print(f"lastmile: registry {folder} is not a folder", file=sys.stderr)
        return None
    return folder


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from lastmile_dev.localrun import run_stack

    registry = _registry(args.registry, "sample")
    return 2 if registry is None else run_stack(settings, registry=registry, data_dir=args.data_dir)


def _scenarios(text: str) -> list[str]:
    from lastmile_dev.bench.runner import selected

    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        selected(names)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def _bench(args: argparse.Namespace, _: Settings) -> int:
    from lastmile_dev.bench.core import Config
    from lastmile_dev.bench.runner import main as bench_main

    registry = _registry(args.registry, "sample" if args.quick else "national")
    if registry is None:
        return 2
    config = Config.quick_run(registry) if args.quick else Config(registry_dir=registry)
    if args.duration is not None:
        if args.duration <= 0:
            print("lastmile bench: --duration must be positive", file=sys.stderr)
            return 2
        config = dataclasses.replace(
            config, duration_seconds=args.duration, freshness_seconds=min(config.freshness_seconds, args.duration)
        )
    if args.memory_events is not None:
        if args.memory_events < 1:
            print("lastmile bench: --memory-events must be at least 1", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, memory_events=args.memory_events)
    if args.runs is not None:
        if args.runs < 1:
            print("lastmile bench: --runs must be at least 1", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, runs=args.runs)
    return bench_main(config, args.scenarios, args.out)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _soak(args: argparse.Namespace, _: Settings) -> int:
    from lastmile_dev.soak import SoakConfig
    from lastmile_dev.soak import main as soak_main

    registry = _registry(args.registry, "national")
    if registry is None:
        return 2
    return soak_main(
        SoakConfig(
            minutes=args.minutes,
            rate=args.rate,
            fault_every_minutes=args.fault_every_minutes,
            registry_dir=registry,
            out_dir=args.out,
        )
    )
