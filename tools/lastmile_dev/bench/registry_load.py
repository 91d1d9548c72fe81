"""Scenario: `lastmile registry load` of the national registry, timed, then a national query that must be right.

The load runs as the operator runs it, a subprocess against the stack's Redis; ``villages_total`` is checked against a
count made here from the CSVs, independently of :mod:`lastmile.registry` and :mod:`lastmile.divisions`.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis.asyncio as aioredis

from lastmile import names
from lastmile.registry import BUNDLED, Registry, read_registry
from lastmile.settings import Settings
from lastmile_dev import devstack
from lastmile_dev.bench.core import Context, Figure, Result
from lastmile_dev.bench.stack import settings_env

TARGET_SECONDS: Final = 60.0
SCRATCH_DB: Final = 15  # an empty database of the stack's Redis server, for the fresh load
LOAD_TIMEOUT_SECONDS: Final = 600.0

# The classification rule on village-level names (docs/registry.md), written out again on purpose (not imported from
# the code under test).
VILLAGE_ENDINGS: Final = ("村委会", "村民委员会")
COMMUNITY_ENDINGS: Final = ("居委会", "居民委员会", "社区")
BARE_VILLAGE_ENDINGS: Final = ("村", "嘎查")


def registry_folder(registry_dir: Path | None) -> Path:
    return registry_dir if registry_dir is not None else BUNDLED["sample"]


async def registry_of(ctx: Context) -> Registry:
    """The registry the stack was loaded with: the runner's copy, else read now (~3 s nationally)."""
    if ctx.registry is not None:
        return ctx.registry
    return await asyncio.to_thread(read_registry, registry_folder(ctx.config.registry_dir))


def kind_of(name: str, given: str = "") -> str:
    """A village-level unit's kind: an explicit ``kind`` column wins, else the ending of its name."""
    if given.strip():
        return given.strip()
    name = name.strip()
    if name.endswith(VILLAGE_ENDINGS):
        return "village"
    if name.endswith(COMMUNITY_ENDINGS):
        return "community"
    if name.endswith(BARE_VILLAGE_ENDINGS):
        return "village"
    return "other"


def count_kinds(folder: Path) -> Counter[str]:
    """Village-level units per kind in ``folder``'s villages.csv(.gz), straight from the CSV."""
    path = folder / "villages.csv"
    kinds: Counter[str] = Counter()
    with (
        path.open(encoding="utf-8-sig", newline="")
        if path.exists()
        else gzip.open(folder / "villages.csv.gz", "rt", encoding="utf-8-sig", newline="")
    ) as stream:
        for row in csv.DictReader(stream):
            kinds[kind_of(row["name"], row.get("kind") or "")] += 1
    return kinds


def scratch_url(redis_url: str, db: int = SCRATCH_DB) -> str | None:
    """The same server's database ``db``; None for URLs that name no database (unix sockets, clusters)."""
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss"):
        return None
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


@dataclass
class Load:
    seconds: float
    output: str
    memory_bytes: int  # used_memory after minus before (meaningful for a fresh load)


async def used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def timed_load(settings: Settings, folder: Path) -> Load:
    """Run `lastmile registry load` with ``settings`` and time it; raise if it fails."""
    client = aioredis.from_url(settings.redis_url)
    try:
        before = await used_memory(client)
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *devstack.lastmile_command("registry", "load", str(folder), "--no-progress"),
            env=settings_env(settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), LOAD_TIMEOUT_SECONDS)
        seconds = time.perf_counter() - started
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"`lastmile registry load` exited with {proc.returncode}:\n{text}")
        return Load(seconds, text, await used_memory(client) - before)
    finally:
        await client.aclose()


async def fresh_load(settings: Settings, folder: Path) -> Load | None:
    """Load ``folder`` into the empty scratch database, measure it, then flush it; None if there is none."""
    url = scratch_url(settings.redis_url)
    if url is None:
        return None
    client = aioredis.from_url(url)
    try:
        if await client.dbsize():
            return None  # not ours to flush
        try:
            return await timed_load(settings.replace(redis_url=url), folder)
        finally:
            await client.flushdb()
    finally:
        await client.aclose()


async def run(ctx: Context) -> Result:
    stack = ctx.stack
    settings = stack.settings
    folder = registry_folder(ctx.config.registry_dir)
    result = Result("registry_load")

    ctx.progress("registry: counting villages in the CSV", 0, 4)
    kinds = await asyncio.to_thread(count_kinds, folder)
    expected = kinds["village"]

    ctx.progress("registry: read + validate (baseline)", 1, 4)
    started = time.perf_counter()
    registry = await asyncio.to_thread(read_registry, folder)
    read_seconds = time.perf_counter() - started
    rows = len(registry.villages)
    units = sum(1 for _ in registry.units())

    client = aioredis.from_url(settings.redis_url)
    try:
        reload = bool(await client.exists(names.key(settings.redis_key_prefix, names.REG_META)))
    finally:
        await client.aclose()

    ctx.progress("registry: `lastmile registry load` into the stack", 2, 4)
    stack_load = await timed_load(settings, folder)
    query_started = time.perf_counter()
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(
            f"{stack.coverage_url}/v1/coverage", headers={"Authorization": f"Bearer {stack.regulator_token}"}
        )
    query_ms = (time.perf_counter() - query_started) * 1000
    body: dict[str, Any] = response.json() if response.status_code == 200 else {}
    answered = body.get("villages_total")

    fresh: Load | None = None
    if reload:
        ctx.progress("registry: fresh load into an empty scratch database", 3, 4)
        fresh = await fresh_load(settings, folder)
    ctx.progress("registry: done", 4, 4)

    what = f"{rows:,} village-level rows, {units:,} units"
    if fresh is not None:
        result.figures.append(
            _load_figure("registry load, fresh", fresh.seconds, read_seconds, what, "into an empty database")
        )
    result.figures.append(
        _load_figure(
            "registry load into the running stack",
            stack_load.seconds,
            read_seconds,
            what,
            "a reload: the stack had loaded it at start" if reload else "fresh: the stack held no registry",
        )
    )
    result.exact = response.status_code == 200 and answered == expected and registry.kind_counts["village"] == expected
    result.figures.append(
        Figure(
            "national query straight after the load: villages_total",
            float(answered) if isinstance(answered, int) else None,
            "villages",
            f"= {expected:,} (counted from the CSV)",
            result.exact,
            note=f"HTTP {response.status_code} in {query_ms:.0f} ms; "
            f"lastmile.registry counts {registry.kind_counts['village']:,}",
        )
    )
    memory = fresh if fresh is not None else (None if reload else stack_load)
    result.samples = {
        "registry_dir": str(folder),
        "rows": rows,
        "units": units,
        "kinds_counted": dict(kinds),
        "kinds_read": dict(registry.kind_counts),
        "read_validate_seconds": read_seconds,
        "stack_load_seconds": stack_load.seconds,
        "stack_load_was_reload": reload,
        "fresh_load_seconds": fresh.seconds if fresh is not None else None,
        "registry_memory_bytes": memory.memory_bytes if memory is not None else None,
        "national_query": {"status": response.status_code, "ms": query_ms, "villages_total": answered},
        "load_output": stack_load.output.strip().splitlines(),
    }
    return result


def _load_figure(name: str, seconds: float, baseline: float, what: str, how: str) -> Figure:
    return Figure(
        name,
        seconds,
        "s",
        f"≤ {TARGET_SECONDS:.0f} s",
        seconds <= TARGET_SECONDS,
        baseline=baseline,
        baseline_name="read + validate only",
        note=f"{what}; {how}",
    )
