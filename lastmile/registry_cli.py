"""`lastmile registry load DIR`: read and check the whole folder, then write it, with a progress bar."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lastmile.settings import Settings


def load_command(settings: Settings, directory: Path, *, progress: bool = True) -> int:
    from coverage_service.registry_store import load_registry
    from lastmile.registry import RegistryError, read_registry

    console = Console(stderr=True)
    try:
        registry = read_registry(directory)
    except RegistryError as exc:
        print(f"lastmile registry load: {exc}", file=sys.stderr)
        return 1

    async def load() -> object:
        client = aioredis.from_url(settings.redis_url, decode_responses=True)
        try:
            with Progress(
                TextColumn("loading registry"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, disable=not progress,
            ) as bar:
                task = bar.add_task("load", total=None)
                return await load_registry(
                    client, settings.redis_key_prefix, registry,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
        finally:
            await client.aclose()

    report = asyncio.run(load())
    print(report)
    return 0
