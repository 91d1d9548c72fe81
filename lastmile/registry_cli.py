"""`lastmile registry load DIR`: read and check the whole folder, then write it, with a progress bar."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lastmile.divisions import KIND_COMMUNITY, KIND_OTHER, KIND_VILLAGE
from lastmile.settings import Settings

if TYPE_CHECKING:
    from coverage_service.registry_store import LoadReport


def load_command(settings: Settings, directory: Path, *, progress: bool = True) -> int:
    from coverage_service.registry_store import load_registry
    from lastmile.registry import RegistryError, read_registry

    console = Console(stderr=True)
    try:
        registry = read_registry(directory)
    except RegistryError as exc:
        print(f"lastmile registry load: {exc}", file=sys.stderr)
        return 1

    async def load() -> LoadReport:
        client = aioredis.from_url(settings.redis_url, decode_responses=True)
        try:
            with Progress(
                TextColumn("loading registry"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                disable=not progress,
            ) as bar:
                task = bar.add_task("load", total=None)
                return await load_registry(
                    client,
                    settings.redis_key_prefix,
                    registry,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    population_tiers=settings.population_tiers,
                )
        finally:
            await client.aclose()

    report = asyncio.run(load())
    print(summary(directory, report))
    return 0


def summary(directory: Path, report: LoadReport) -> str:
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
