"""Per-token request budget: a token bucket per regulator, in this process's memory.

Why in memory: the limit protects one API process from one dashboard polling in a tight loop; a shared
budget across processes would cost a Redis round trip on every request. With N processes behind a load
balancer a token gets up to N times the budget, which is documented. Pure; no I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from lastmile.settings import Settings, SettingsError


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``take(key)`` spends one request from ``key``'s bucket: 0.0 when allowed, else the seconds until it
    would be. Buckets hold at most ``burst`` requests and refill at ``per_second``; ``per_second`` 0 disables."""

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        if not math.isfinite(settings.coverage_rate_limit_per_second) or settings.coverage_rate_limit_per_second < 0:
            raise SettingsError("LASTMILE_COVERAGE_RATE_LIMIT_PER_SECOND: must be 0 (no limit) or a positive number")
        if settings.coverage_rate_limit_burst < 1:
            raise SettingsError("LASTMILE_COVERAGE_RATE_LIMIT_BURST: must be at least 1")
        return cls(settings.coverage_rate_limit_per_second, settings.coverage_rate_limit_burst)

    def take(self, key: str) -> float:
        if self.per_second <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.per_second)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.per_second


def retry_after(wait_s: float) -> str:
    """A Retry-After value: whole seconds, at least 1, never earlier than the bucket allows."""
    return str(max(1, math.ceil(wait_s)))
