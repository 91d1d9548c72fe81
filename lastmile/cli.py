"""`lastmile`: run the services, manage topics and the registry, run the local stack."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from lastmile.settings import Settings, SettingsError

SUBCOMMANDS = ("ingest", "worker", "coverage", "topics", "registry", "snapshot", "run", "bench")
SAMPLE_REGISTRY = Path(__file__).resolve().parent / "sample_registry"
# The national registry beside the repository (../shared/data/...), used by `lastmile bench` when present.
NATIONAL_REGISTRY = Path("..") / "shared" / "data" / "cn-divisions-2023"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lastmile",
        description="Express-to-villages coverage from carriers' last-mile scans. Settings come from the "
        "environment (see the README's settings table).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("ingest", help="run the carrier-facing ingest API (INGEST_HOST:INGEST_PORT)")
    sub.add_parser("worker", help="run the stream worker that folds scans into Redis")
    sub.add_parser("coverage", help="run the regulator-facing coverage API (COVERAGE_HOST:COVERAGE_PORT)")
    topics = sub.add_parser("topics", help="manage the Kafka topics")
    topics_sub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    topics_sub.add_parser("create", help="create the scan and dead-letter topics if missing")
    registry = sub.add_parser("registry", help="manage the division registry in Redis")
    registry_sub = registry.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = registry_sub.add_parser("load", help="load a folder of division CSVs (plain or .gz), idempotently")
    load.add_argument(
        "directory",
        type=Path,
        help=f"folder of provinces/cities/areas/streets/villages CSVs (the bundled sample: {SAMPLE_REGISTRY})",
    )
    load.add_argument("--no-progress", action="store_true", help="no progress bar")
    snapshot = sub.add_parser(
        "snapshot", help="take the daily history snapshot of every region now (idempotent per day)"
    )
    snapshot.add_argument(
        "--date",
        type=_day,
        help="label it with this date, YYYY-MM-DD, not after today (default: today, China Standard Time); "
        "the figures are always the current ones",
    )
    run = sub.add_parser("run", help="run everything locally: embedded broker, redis-server, the three services")
    run.add_argument("--registry", type=Path, default=SAMPLE_REGISTRY, help="registry folder to load at start")
    run.add_argument("--data-dir", type=Path, default=Path(".run"), help="where Redis data, logs and tokens go")
    bench = sub.add_parser(
        "bench",
        help="run the benchmark scenarios against a fresh local stack; print the table, write results JSON",
        description="Starts the embedded broker and redis-server (or uses KAFKA_BOOTSTRAP_SERVERS / REDIS_URL), "
        "the services with bench tokens, runs the scenarios in order and prints each figure beside its target.",
    )
    bench.add_argument(
        "--quick", action="store_true", help="a few thousand events on the bundled sample registry (unless --registry)"
    )
    bench.add_argument(
        "--scenarios",
        type=_scenarios,
        default=None,
        help="comma-separated, run in the harness's order (default all): "
        "registry_load,throughput,naive,freshness,api_load,scaling,memory",
    )
    bench.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="posting time of throughput")
    bench.add_argument(
        "--registry",
        type=Path,
        default=None,
        help=f"registry folder (default: {NATIONAL_REGISTRY} if present, else the bundled sample)",
    )
    bench.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"lastmile: {exc}", file=sys.stderr)
        return 2
    command = args.command
    if command == "ingest":
        from ingest_service.app import serve

        serve(settings)
    elif command == "coverage":
        from coverage_service.api import serve as serve_coverage

        serve_coverage(settings)
    elif command == "worker":
        from coverage_service.worker import run as run_worker

        run_worker(settings)
    elif command == "topics":
        from lastmile.topics import ensure_topics

        created = asyncio.run(ensure_topics(settings))
        print(f"created: {', '.join(created)}" if created else "topics already exist")
    elif command == "registry":
        from lastmile.registry_cli import load_command

        return load_command(settings, args.directory, progress=not args.no_progress)
    elif command == "snapshot":
        return _snapshot(settings, args.date)
    elif command == "run":
        from lastmile.localrun import run_stack

        return run_stack(settings, registry=args.registry, data_dir=args.data_dir)
    elif command == "bench":
        return _bench(args)
    return 0


def _scenarios(text: str) -> list[str]:
    from lastmile.bench.runner import selected

    names = [n.strip() for n in text.split(",") if n.strip()]
    try:
        selected(names)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def _bench(args: argparse.Namespace) -> int:
    import dataclasses

    from lastmile.bench.core import Config
    from lastmile.bench.runner import main as bench_main

    registry: Path | None = args.registry
    if registry is None and not args.quick and NATIONAL_REGISTRY.is_dir():
        registry = NATIONAL_REGISTRY
    if registry is not None and not registry.is_dir():
        print(f"lastmile bench: --registry {registry} is not a folder", file=sys.stderr)
        return 2
    config = Config.quick_run(registry) if args.quick else Config(registry_dir=registry)
    if args.duration is not None:
        if args.duration <= 0:
            print("lastmile bench: --duration must be positive", file=sys.stderr)
            return 2
        config = dataclasses.replace(
            config, duration_seconds=args.duration, freshness_seconds=min(config.freshness_seconds, args.duration)
        )
    return bench_main(config, args.scenarios, args.out)


def _day(text: str) -> date:
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD")


def _snapshot(settings: Settings, day: date | None) -> int:
    from coverage_service import history

    if day is not None and day > history.today():
        print(f"lastmile: --date {day} is after today ({history.today()}, China Standard Time)", file=sys.stderr)
        return 2
    from redis.exceptions import RedisError

    try:
        taken = asyncio.run(history.take_now(settings, day))
    except RedisError as exc:
        print(f"lastmile: snapshot failed, Redis (REDIS_URL): {exc}", file=sys.stderr)
        return 1
    if taken.already:
        print(f"snapshot {taken.day} was already taken ({taken.regions} regions); nothing changed")
    else:
        print(f"snapshot {taken.day}: {taken.regions} regions, {taken.written} entries written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
