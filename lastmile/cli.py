"""`lastmile`: run the services, manage topics and the registry, run the local stack."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from lastmile.settings import Settings, SettingsError

SUBCOMMANDS = (
    "ingest", "worker", "coverage", "topics", "registry", "snapshot", "rebuild", "dead-letters", "run", "bench",
    "soak",
)  # fmt: skip
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
    rebuild = sub.add_parser(
        "rebuild",
        help="fold the scan topic from its beginning into the read model (after Redis lost its data)",
        description="Folds every record of the scan topic not yet applied (all of them after --wipe) with the "
        "worker's own fold and apply script, up to the topic's end when it starts. Exactly-once like the worker: "
        "run it again, or let a worker take over, and nothing is counted twice.",
    )
    rebuild.add_argument("--registry", type=Path, default=None, help="registry folder to load (needed with --wipe)")
    rebuild.add_argument(
        "--wipe",
        action="store_true",
        help="first delete the read model and the registry under REDIS_KEY_PREFIX (history snapshots are kept); "
        "refused while workers run",
    )
    rebuild.add_argument("--no-progress", action="store_true", help="no progress bar")
    dead = sub.add_parser("dead-letters", help="list what the worker dead-lettered, with reason and source position")
    dead.add_argument("--limit", type=int, default=50, help="the last N (default 50; 0 for all)")
    dead.add_argument("--json", action="store_true", help="one JSON object per line, as written to the topic")
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
        "--runs",
        type=int,
        default=None,
        metavar="N",
        help="runs of each timed scenario, reported as medians (default 3; 1 with --quick)",
    )
    _add_stack_arguments(bench)
    soak = sub.add_parser(
        "soak",
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
    elif command == "rebuild":
        return _rebuild(settings, args.registry, wipe=args.wipe, progress=not args.no_progress)
    elif command == "dead-letters":
        return _dead_letters(settings, args.limit or None, as_json=args.json)
    elif command == "run":
        from lastmile.localrun import run_stack

        return run_stack(settings, registry=args.registry, data_dir=args.data_dir)
    elif command == "bench":
        return _bench(args)
    elif command == "soak":
        return _soak(args)
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
    if args.runs is not None:
        if args.runs < 1:
            print("lastmile bench: --runs must be at least 1", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, runs=args.runs)
    return bench_main(config, args.scenarios, args.out)


def _add_stack_arguments(command: argparse.ArgumentParser) -> None:
    """The registry and results folder of the commands that run the local stack under load (bench, soak)."""
    command.add_argument(
        "--registry",
        type=Path,
        default=None,
        help=f"registry folder (default: {NATIONAL_REGISTRY} if present, else the bundled sample)",
    )
    command.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _soak(args: argparse.Namespace) -> int:
    from lastmile.soak import SoakConfig
    from lastmile.soak import main as soak_main

    registry: Path | None = args.registry
    if registry is None:
        registry = NATIONAL_REGISTRY if NATIONAL_REGISTRY.is_dir() else SAMPLE_REGISTRY
    if not registry.is_dir():
        print(f"lastmile soak: --registry {registry} is not a folder", file=sys.stderr)
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


def _rebuild(settings: Settings, registry: Path | None, *, wipe: bool, progress: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from coverage_service.rebuild import RebuildError, rebuild
    from lastmile.registry import RegistryError

    with Progress(
        TextColumn("folding the scan topic (records)"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
    ) as bar:
        task = bar.add_task("rebuild", total=None)
        try:
            report = asyncio.run(
                rebuild(
                    settings,
                    registry_dir=registry,
                    wipe=wipe,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            )
        except (RebuildError, RegistryError) as exc:
            print(f"lastmile rebuild: {exc}", file=sys.stderr)
            return 1
    print(
        f"rebuilt from {settings.scan_topic} ({report.partitions} partitions) in {report.seconds:.1f} s: "
        f"{report.records:,} records folded ({report.records_replayed:,} already applied), "
        f"{report.events_applied:,} events applied, {report.events_duplicate:,} duplicates dropped, "
        f"{report.events_unknown_location:,} with unknown location codes, {report.events_invalid:,} invalid"
        + (f"; {report.keys_deleted:,} keys wiped first" if wipe else "")
    )
    return 0


def _dead_letters(settings: Settings, limit: int | None, *, as_json: bool) -> int:
    import orjson

    from lastmile.deadletters import read_dead_letters

    total, letters = asyncio.run(read_dead_letters(settings, limit))
    for letter in letters:
        print(orjson.dumps(letter.body).decode() if as_json else letter.line)
    if not as_json:
        shown = f"the last {len(letters)}" if len(letters) < total else "all"
        print(f"{total:,} dead letters in {settings.dead_letter_topic}; {shown} shown", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
