"""Computed figures kept in this process for a short, fixed time, each computed by one request at a time.

A hundred dashboards asking for the nation at once cost one read, and no figure served is older than
LASTMILE_COVERAGE_FIGURES_MAX_AGE_SECONDS plus the pipeline's own delay (docs/reading-coverage.md, "Freshness").
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger("lastmile.coverage.cache")

MAX_ENTRIES: Final = 8192

Compute = Callable[[], Awaitable[tuple[V, float]]]
"""Makes the value; returns it with the clock time of the oldest read it was made from."""


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    born: float  # clock time of the oldest read behind the value


class FigureCache(Generic[K, V]):
    """Values by key (what was asked: the document and its scope, never who asked), each served while at most
    ``max_age_s`` old, counted from the oldest read it was made from; ``max_age_s`` 0 turns the cache off. The
    caller checks access before asking: values hold figures, not permissions.

    Requests for a key being computed wait for that computation (single flight), which runs in its own task, so a
    client that leaves does not cancel it for the others; a failure reaches every waiter and is not kept. Past
    ``refresh_after_s`` a value is computed again in the background while still served, so a value read often is
    replaced before it expires and no request waits for it.
    """

    def __init__(
        self,
        max_age_s: float,
        *,
        refresh_after_s: float | None = None,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not math.isfinite(max_age_s) or max_age_s < 0:
            raise ValueError(f"max_age_s must be 0 or more, not {max_age_s!r}")
        self.max_age_s = max_age_s
        self.refresh_after_s = refresh_after_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._flights: dict[K, asyncio.Task[tuple[V, float]]] = {}
        self.computed = 0  # computations finished (hits = requests - computed), for tests and metrics

    @property
    def enabled(self) -> bool:
        return self.max_age_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: K, compute: Compute[V]) -> V:
        """The value of ``key``: cached while fresh, else the running computation's, else a new one's."""
        if not self.enabled:
            value, _ = await compute()
            self.computed += 1
            return value
        entry = self._entries.get(key)
        if entry is not None:
            age = self.clock() - entry.born
            if age <= self.max_age_s:
                if self.refresh_after_s is not None and age > self.refresh_after_s and key not in self._flights:
                    self._start(key, compute)
                return entry.value
        flight = self._flights.get(key)
        if flight is None:
            flight = self._start(key, compute)
        value, _ = await asyncio.shield(flight)
        return value

    def put(self, key: K, value: V, born: float) -> None:
        """Keep a value made elsewhere (unless it is already too old, or older than the one kept)."""
        now = self.clock()
        current = self._entries.get(key)
        if not self.enabled or now - born > self.max_age_s or (current is not None and current.born > born):
            return
        self._entries.pop(key, None)
        self._entries[key] = _Entry(value, born)

    def peek(self, key: K) -> V | None:
        """The cached value of ``key`` if it is still fresh, without computing anything."""
        entry = self._entries.get(key)
        if entry is None or self.clock() - entry.born > self.max_age_s:
            return None
        return entry.value

    def _start(self, key: K, compute: Compute[V]) -> asyncio.Task[tuple[V, float]]:
        task = asyncio.ensure_future(self._run(key, compute))
        self._flights[key] = task
        task.add_done_callback(_retrieve)
        return task

    async def _run(self, key: K, compute: Compute[V]) -> tuple[V, float]:
        try:
            value, born = await compute()
            self.computed += 1
            now = self.clock()
            self._drop_expired(now)
            if now - born <= self.max_age_s:
                self._entries.pop(key, None)  # re-inserted last: the entries stay in about the order they expire
                self._entries[key] = _Entry(value, born)
                if len(self._entries) > self.max_entries:
                    self._evict()
            return value, born
        finally:
            self._flights.pop(key, None)

    def _drop_expired(self, now: float) -> None:
        """Drop the expired entries at the front (the oldest), so expired values do not pile up."""
        entries = self._entries
        while entries:
            key = next(iter(entries))
            if now - entries[key].born <= self.max_age_s:
                return
            del entries[key]

    def _evict(self) -> None:
        now = self.clock()
        for k in [k for k, e in self._entries.items() if now - e.born > self.max_age_s]:
            del self._entries[k]
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        self._entries.clear()

    async def close(self) -> None:
        """Cancel the computations still running (at shutdown)."""
        flights = list(self._flights.values())
        for task in flights:
            task.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        self._entries.clear()


def _retrieve(task: asyncio.Task[object]) -> None:
    """A background refresh nobody awaited still has its failure logged, once, not left to the loop."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.debug("figure computation failed: %r", exc)
