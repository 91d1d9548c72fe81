"""CPU time per role over a phase: each service's process group from /proc, Redis from its own INFO cpu (the server's
CPU whoever started it), the harness from getrusage. Divided by the events of the phase: µs per event per role."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User and system CPU seconds of the live processes of process group ``pgid`` (a service and its children)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


async def redis_cpu_seconds(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def harness_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Usage:
    seconds: dict[str, float]  # role -> CPU seconds over the phase

    def per_event_us(self, events: int) -> dict[str, float]:
        return {role: s * 1e6 / events for role, s in self.seconds.items()} if events else {}


class Meter:
    """Reads every role's CPU at start() and stop(); the difference is the phase's."""

    def __init__(self, groups: Callable[[], Mapping[str, list[int]]], redis: aioredis.Redis) -> None:
        self.groups = groups
        self.redis = redis
        self._start: dict[str, float] = {}

    async def _read(self) -> dict[str, float]:
        now = {role: sum(group_cpu_seconds(p) for p in pids) for role, pids in self.groups().items()}
        now["redis"] = await redis_cpu_seconds(self.redis)
        now["harness"] = harness_cpu_seconds()
        return now

    async def start(self) -> None:
        self._start = await self._read()

    async def stop(self) -> Usage:
        end = await self._read()
        return Usage({role: end[role] - self._start.get(role, 0.0) for role in end})
