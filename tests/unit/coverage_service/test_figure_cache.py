"""The figures cache: a value lives at most its max age from its oldest read; one computation per key at a time."""

from __future__ import annotations

import asyncio

import pytest

from coverage_service.api.cache import FigureCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Source:
    """Counts computations; each returns the next number, read at the clock's time."""

    def __init__(self, clock: Clock, *, delay: float = 0.0, fail: bool = False) -> None:
        self.clock, self.delay, self.fail = clock, delay, fail
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self) -> tuple[int, float]:
        self.calls += 1
        born = self.clock()
        await self.release.wait()
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("redis down")
        return self.calls, born


async def test_a_value_is_served_until_it_is_max_age_old_then_computed_again() -> None:
    clock = Clock()
    cache: FigureCache[str, int] = FigureCache(0.5, clock=clock)
    source = Source(clock)
    assert await cache.get("CN", source) == 1
    clock.now += 0.4
    assert await cache.get("CN", source) == 1  # fresh: no read
    clock.now += 0.11  # 0.51 s after the read it was made from
    assert await cache.get("CN", source) == 2
    assert source.calls == 2


async def test_age_counts_from_the_oldest_read_not_from_when_the_value_was_stored() -> None:
    clock = Clock()
    cache: FigureCache[str, int] = FigureCache(0.5, clock=clock)

    async def slow_read() -> tuple[int, float]:
        born = clock()
        clock.now += 0.4  # the computation took 0.4 s
        return 7, born

    assert await cache.get("CN", slow_read) == 7
    clock.now += 0.11
    assert cache.peek("CN") is None  # 0.51 s after its read, though stored 0.11 s ago


async def test_a_value_older_than_the_max_age_when_made_is_not_kept() -> None:
    clock = Clock()
    cache: FigureCache[str, int] = FigureCache(0.5, clock=clock)

    async def very_slow() -> tuple[int, float]:
        born = clock()
        clock.now += 0.6
        return 1, born

    assert await cache.get("CN", very_slow) == 1  # served to the request that waited for it ...
    assert len(cache) == 0  # ... but not to later ones


async def test_keys_are_separate() -> None:
    clock = Clock()
    cache: FigureCache[tuple[str, str], int] = FigureCache(0.5, clock=clock)
    source = Source(clock)
    assert await cache.get(("14", ""), source) == 1
    assert await cache.get(("15", ""), source) == 2
    assert await cache.get(("14", "|carrier:sf"), source) == 3
    assert await cache.get(("14", ""), source) == 1


async def test_concurrent_requests_share_one_computation() -> None:
    clock = Clock()
    cache: FigureCache[str, int] = FigureCache(0.5, clock=clock)
    source = Source(clock, delay=0.01)
    source.release.clear()
    waiting = [asyncio.ensure_future(cache.get("CN", source)) for _ in range(50)]
    await asyncio.sleep(0)
    source.release.set()
    assert await asyncio.gather(*waiting) == [1] * 50
    assert source.calls == 1 and cache.computed == 1


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    clock = Clock()
    cache: FigureCache[str, int] = FigureCache(0.5, clock=clock)
    failing = Source(clock, fail=True)
    results = await asyncio.gather(*(cache.get("CN", failing) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert failing.calls == 1
    assert await cache.get("CN", Source(clock)) == 1  # the next request computes afresh


async def test_a_waiter_that_leaves_does_not_cancel_the_computation_for_the_others() -> None:
    clock = Clock()
    cache: FigureCache[str, int] = FigureCache(0.5, clock=clock)
    source = Source(clock)
    source.release.clear()
    leaving = asyncio.ensure_future(cache.get("CN", source))
    staying = asyncio.ensure_future(cache.get("CN", source))
    await asyncio.sleep(0)
    leaving.cancel()
    source.release.set()
    assert await staying == 1
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert cache.peek("CN") == 1


async def test_max_age_zero_turns_the_cache_off() -> None:
    clock = Clock()
    cache: FigureCache[str, int] = FigureCache(0.0, clock=clock)
    source = Source(clock)
    assert [await cache.get("CN", source) for _ in range(3)] == [1, 2, 3]
    assert len(cache) == 0


async def test_refresh_ahead_replaces_a_value_read_often_before_it_expires() -> None:
    clock = Clock()
    cache: FigureCache[str, int] = FigureCache(0.5, refresh_after_s=0.3, clock=clock)
    source = Source(clock)
    assert await cache.get("CN", source) == 1
    clock.now += 0.35
    assert await cache.get("CN", source) == 1  # still fresh: served, and a refresh starts behind it
    await asyncio.sleep(0.01)
    assert source.calls == 2
    clock.now += 0.3  # 0.65 s after the first read, 0.3 s after the refresh's
    assert await cache.get("CN", source) == 2
    assert source.calls == 2


async def test_expired_values_do_not_pile_up() -> None:
    clock = Clock()
    cache: FigureCache[int, int] = FigureCache(0.5, clock=clock)
    for key in range(100):
        await cache.get(key, Source(clock))
        clock.now += 0.1
    assert len(cache) <= 6  # only those read in the last 0.5 s


async def test_the_cache_is_bounded() -> None:
    clock = Clock()
    cache: FigureCache[int, int] = FigureCache(60, clock=clock, max_entries=10)
    for key in range(50):
        await cache.get(key, Source(clock))
    assert len(cache) == 10
    assert cache.peek(49) == 1 and cache.peek(0) is None


def test_a_negative_max_age_is_refused() -> None:
    with pytest.raises(ValueError, match="max_age_s"):
        FigureCache(-1)
