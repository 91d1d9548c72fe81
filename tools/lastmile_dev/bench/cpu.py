"""CPU time per role over a phase: each service's process group from /proc, Redis from its own INFO cpu (the server's
CPU whoever started it), the harness from getrusage. Divided by the events of the phase: µs per event per role."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
    return info_cpu_seconds(await redis.info("cpu"))


def info_cpu_seconds(info: Mapping[str, object]) -> float:
    """A redis-server's CPU from INFO cpu: its own threads', and its persistence children's (AOF rewrites, RDB
    saves) once they have ended: durability is work the read model costs Redis too."""
    fields = ("used_cpu_user", "used_cpu_sys", "used_cpu_user_children", "used_cpu_sys_children")
    return sum(float(str(info[f])) for f in fields)


def harness_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def redis_command_stats(redis: aioredis.Redis) -> dict[str, tuple[int, int]]:
    """Per command: calls and microseconds so far (INFO commandstats; commands a script runs count on their own
    line and again inside the script's ``evalsha``)."""
    info = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
        for name, v in info.items()
        if isinstance(v, dict)
    }


@dataclass
class Usage:
    seconds: dict[str, float]  # role -> CPU seconds over the phase
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)  # Redis command -> (calls, µs) over it

    def per_event_us(self, events: int) -> dict[str, float]:
        return {role: s * 1e6 / events for role, s in self.seconds.items()} if events else {}

    def redis_commands_per_event(self, events: int) -> dict[str, tuple[float, float]]:
        """Per Redis command, busiest first: (calls, µs) per event."""
        if not events:
            return {}
        ranked = sorted(self.commands.items(), key=lambda kv: -kv[1][1])
        return {name: (calls / events, usec / events) for name, (calls, usec) in ranked if calls}


class Meter:
    """Reads every role's CPU at start() and stop(); the difference is the phase's."""

    def __init__(self, groups: Callable[[], Mapping[str, list[int]]], redis: aioredis.Redis) -> None:
        self.groups = groups
        self.redis = redis
        self._start: dict[str, float] = {}
        self._commands: dict[str, tuple[int, int]] = {}

    async def _read(self) -> dict[str, float]:
        now = {role: sum(group_cpu_seconds(p) for p in pids) for role, pids in self.groups().items()}
        now["redis"] = await redis_cpu_seconds(self.redis)
        now["harness"] = harness_cpu_seconds()
        return now

    async def start(self) -> None:
        self._start = await self._read()
        self._commands = await redis_command_stats(self.redis)

    async def stop(self) -> Usage:
        end = await self._read()
        commands = await redis_command_stats(self.redis)
        before = self._commands
        return Usage(
            {role: end[role] - self._start.get(role, 0.0) for role in end},
            {
                name: (calls - before.get(name, (0, 0))[0], usec - before.get(name, (0, 0))[1])
                for name, (calls, usec) in commands.items()
            },
        )
