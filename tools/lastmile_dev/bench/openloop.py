"""An open-loop HTTP load: requests go out at a constant rate whatever the answers, and each latency is counted from
the moment the request was due, not sent. A server that slows down cannot slow the load and hide its slow answers
(coordinated omission), as a closed loop of clients lets it. Every latency is kept: the percentiles are exact, up to
p99.9 of a 30-second run, not a histogram's buckets."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from lastmile_dev.bench.core import percentile

PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)
TIMEOUT_SECONDS: Final = 5.0
# More requests than this outstanding means the server is far behind: the rest are counted as not sent.
MAX_OUTSTANDING: Final = 4096


def is_error(status: int) -> bool:
    return not (200 <= status < 300 or status == 304)


@dataclass
class OpenLoopRun:
    rate: float  # offered, requests/s
    seconds: float
    due: int  # requests the schedule held
    completed: int  # answered, any status
    percentiles_ms: dict[float, float]
    max_ms: float
    statuses: dict[int, int]
    socket_errors: int = 0  # no answer: refused, reset, timed out
    not_sent: int = 0  # due while MAX_OUTSTANDING were already waiting
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.socket_errors + self.not_sent + sum(n for s, n in self.statuses.items() if is_error(s))


async def open_loop(
    base_url: str,
    token: str,
    paths: Sequence[str],
    rate: float,
    seconds: float,
    connections: int = 256,
) -> OpenLoopRun:
    """Send ``rate`` requests a second for ``seconds``, cycling through ``paths``, on up to ``connections``
    keep-alive connections; a request due while all are busy waits for one, and that wait counts in its latency."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    socket_errors = 0
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    due = int(rate * seconds)
    outstanding: set[asyncio.Task[None]] = set()
    not_sent = 0
    lag_max = 0.0

    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout, headers=headers) as session:

        async def one(path: str, due_at: float) -> None:
            nonlocal socket_errors
            try:
                async with session.get(path) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                socket_errors += 1
                return
            statuses[status] += 1
            latencies.append(loop.time() - due_at)

        start = loop.time() + 0.05
        sent = 0
        while sent < due:
            now = loop.time()
            # Everything due by now goes out at once: the sleep below wakes about every millisecond, coarser than
            # the schedule at these rates, and each latency still counts from its own due time.
            while sent < due and start + sent / rate <= now:
                due_at = start + sent / rate
                lag_max = max(lag_max, now - due_at)
                if len(outstanding) >= MAX_OUTSTANDING:
                    not_sent += 1
                else:
                    task = asyncio.create_task(one(paths[sent % len(paths)], due_at))
                    outstanding.add(task)
                    task.add_done_callback(outstanding.discard)
                sent += 1
            if sent < due:
                await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
        if outstanding:
            await asyncio.wait(outstanding)
        elapsed = loop.time() - start

    completed = sum(statuses.values())
    ordered = sorted(latencies)
    return OpenLoopRun(
        rate=rate,
        seconds=elapsed,
        due=due,
        completed=completed,
        percentiles_ms={p: percentile(ordered, p) * 1000 for p in PERCENTILES},
        max_ms=ordered[-1] * 1000 if ordered else math.nan,
        statuses=dict(statuses),
        socket_errors=socket_errors,
        not_sent=not_sent,
        detail={"send_lag_max_ms": lag_max * 1000},
    )
