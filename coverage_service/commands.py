"""The coverage service's subcommands of `lastmile`: the worker, the API, and the read model's tools."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from lastmile.cli import SERVICE, TOOL, command
from lastmile.divisions import KIND_COMMUNITY, KIND_OTHER, KIND_VILLAGE
from lastmile.registry import BUNDLED
from lastmile.settings import Settings

if TYPE_CHECKING:
    from coverage_service.readmodel.registry_store import LoadReport


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command(sub, "worker", _worker, SERVICE, help="run the stream worker that folds scans into Redis")
    command(
        sub,
        "coverage",
        _coverage,
        SERVICE,
        help="run the regulator-facing coverage API (LASTMILE_COVERAGE_HOST:LASTMILE_COVERAGE_PORT)",
    )

    registry = command(sub, "registry", _registry, TOOL, help="manage the division registry in Redis")
    actions = registry.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = actions.add_parser("load", help="load a registry (a folder of division CSVs, plain or .gz), idempotently")
    load.add_argument(
        "directory",
        metavar="REGISTRY",
        help=f"a folder of provinces/cities/areas/streets/villages CSVs, or a bundled registry: "
        f"{', '.join(BUNDLED)} (the national 2023 edition)",
    )
    load.add_argument("--no-progress", action="store_true", help="no progress bar")
    load.add_argument("--edition", default="", help="the edition's name, recorded with it (e.g. 2023)")
    load.add_argument(
        "--dry-run",
        action="store_true",
        help="print what changes from the loaded edition (added, removed, renamed, reclassified units; counties "
        "added and removed) and write nothing",
    )
    load.add_argument("--yes", action="store_true", help="apply a changed edition without asking")

    snapshot = command(
        sub,
        "snapshot",
        _snapshot,
        TOOL,
        help="take the daily history snapshot of every region now (idempotent per day)",
    )
    snapshot.add_argument(
        "--date",
        type=_day,
        help="label it with this date, YYYY-MM-DD, not after today (default: today, China Standard Time); "
        "the figures are always the current ones",
    )

    rebuild = command(
        sub,
        "rebuild",
        _rebuild,
        TOOL,
        help="fold the scan topic from its beginning into the read model (after Redis lost its data)",
        description="Folds every record of the scan topic not yet applied (all of them after --wipe) with the "
        "worker's own fold and apply script, up to the topic's end when it starts. Exactly-once like the worker: "
        "run it again, or let a worker take over, and nothing is counted twice.",
    )
    rebuild.add_argument(
        "--registry", default=None, help="registry to load (a folder, or a bundled name; needed with --wipe)"
    )
    rebuild.add_argument(
        "--wipe",
        action="store_true",
        help="first delete the read model and the registry under REDIS_KEY_PREFIX (history snapshots are kept); "
        "refused while workers run",
    )
    rebuild.add_argument("--no-progress", action="store_true", help="no progress bar")

    dead = command(
        sub,
        "dead-letters",
        _dead_letters,
        TOOL,
        help="list what the worker dead-lettered, with reason and source position",
    )
    dead.add_argument("--limit", type=int, default=50, help="the last N (default 50; 0 for all)")
    dead.add_argument("--json", action="store_true", help="one JSON object per line, as written to the topic")


def _worker(_: argparse.Namespace, settings: Settings) -> int:
    from coverage_service.worker.app import run

    run(settings)
    return 0


def _coverage(_: argparse.Namespace, settings: Settings) -> int:
    from coverage_service.api.server import serve

    serve(settings)
    return 0


def _registry(args: argparse.Namespace, settings: Settings) -> int:
    """Read and check the whole registry first, then write it, with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from coverage_service.readmodel.registry_store import LayoutMismatch, load_registry, loaded_edition
    from lastmile import editions, redis_client
    from lastmile.registry import RegistryError, Unit, locate, read_registry

    directory = locate(args.directory)
    try:
        registry = read_registry(directory)
    except RegistryError as exc:
        print(f"lastmile registry load: {exc}", file=sys.stderr)
        return 1

    removed: list[Unit] = []  # the loaded edition's units this one removes: they leave every figure

    async def changes() -> tuple[str, bool] | None:
        """(the change list from the loaded edition, whether it alters loaded units), or None when there is nothing
        to compare with or no change."""
        client = redis_client.connect(settings)
        try:
            loaded = await loaded_edition(client, settings.redis_key_prefix)
        finally:
            await client.aclose()
        if loaded is None:
            return None
        new = editions.records(registry)
        found = editions.compare(loaded.units, new)
        if found.empty:
            return None
        removed.extend(Unit(c, *loaded.units[c]) for c in found.removed)
        name = f"{loaded.edition or 'the loaded edition'} → {args.edition or directory}"
        return editions.summary(found, loaded.units, new, name), found.alters

    async def load() -> LoadReport:
        client = redis_client.connect(settings)
        try:
            with Progress(
                TextColumn("loading registry"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                disable=args.no_progress,
            ) as bar:
                task = bar.add_task("load", total=None)
                return await load_registry(
                    client,
                    settings.redis_key_prefix,
                    registry,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    population_tiers=settings.population_tiers,
                    edition=args.edition,
                    removed=removed,
                )
        finally:
            await client.aclose()

    listed = asyncio.run(changes())
    if listed is not None:
        print(listed[0])
    if args.dry_run:
        print("dry run: nothing written" if listed is not None else "dry run: no change from the loaded edition")
        return 0
    if listed is not None and listed[1] and not args.yes:
        if not sys.stdin.isatty():
            print(
                "lastmile registry load: the edition removes, renames or reclassifies units (above); pass --yes to "
                "apply",
                file=sys.stderr,
            )
            return 2
        if input("apply these changes? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not applied")
            return 1
    try:
        report = asyncio.run(load())
    except LayoutMismatch as exc:
        print(f"lastmile registry load: {exc}", file=sys.stderr)
        return 1
    print(load_summary(directory, report))
    return 0


def load_summary(directory: Path, report: LoadReport) -> str:
    kinds = report.kinds
    lines = [
        f"loaded the registry from {directory} in {report.elapsed_seconds:.1f} s",
        f"  village-level units  {sum(kinds.values()):>9,}",
        f"    {KIND_VILLAGE:<18} {kinds.get(KIND_VILLAGE, 0):>9,}  administrative villages, counted",
        f"    {KIND_COMMUNITY:<18} {kinds.get(KIND_COMMUNITY, 0):>9,}  residents' committees and communities",
        f"    {KIND_OTHER:<18} {kinds.get(KIND_OTHER, 0):>9,}  farms, forest farms, management areas ...",
        "  regions              " + ", ".join(f"{n:,} {level}" for level, n in report.regions.items()),
        f"  new units {report.added:,}, reclassified {report.reclassified:,}",
    ]
    return "\n".join(lines)


def _day(text: str) -> date:
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD")


def _snapshot(args: argparse.Namespace, settings: Settings) -> int:
    from redis.exceptions import RedisError

    from coverage_service.readmodel import history

    day: date | None = args.date
    if day is not None and day > history.today():
        print(f"lastmile: --date {day} is after today ({history.today()}, China Standard Time)", file=sys.stderr)
        return 2
    try:
        taken = asyncio.run(history.take_now(settings, day))
    except RedisError as exc:
        print(f"lastmile: snapshot failed, Redis (LASTMILE_REDIS_URL): {exc}", file=sys.stderr)
        return 1
    if taken.already:
        print(f"snapshot {taken.day} was already taken ({taken.regions} regions); nothing changed")
    else:
        print(f"snapshot {taken.day}: {taken.regions} regions, {taken.written} entries written")
    return 0


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from coverage_service.worker.rebuild import RebuildError, rebuild
    from lastmile.registry import RegistryError, locate

    registry: Path | None = None if args.registry is None else locate(args.registry)
    with Progress(
        TextColumn("folding the scan topic (records)"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=args.no_progress,
    ) as bar:
        task = bar.add_task("rebuild", total=None)
        try:
            report = asyncio.run(
                rebuild(
                    settings,
                    registry_dir=registry,
                    wipe=args.wipe,
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
        + (f"; {report.keys_deleted:,} keys wiped first" if args.wipe else "")
    )
    return 0


def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from coverage_service.worker.deadletters import read_dead_letters

    total, letters = asyncio.run(read_dead_letters(settings, args.limit or None))
    for letter in letters:
        print(orjson.dumps(letter.body).decode() if args.json else letter.line)
    if not args.json:
        shown = f"the last {len(letters)}" if len(letters) < total else "all"
        print(f"{total:,} dead letters in {settings.dead_letter_topic}; {shown} shown", file=sys.stderr)
    return 0
