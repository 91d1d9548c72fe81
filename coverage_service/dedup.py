"""Exact, compact deduplication: which (carrier, event_id) a partition has applied within the window. No I/O.

Each applied event leaves a 15-byte digest, kept by the hour it was applied: in Redis in fixed-size strings per
partition and hour, in the worker as sorted arrays searched a whole batch at a time. docs/read-model.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, cast

import numpy as np
import numpy.typing as npt

from lastmile import correction

DIGEST_BYTES: Final = correction.IDENTITY_BYTES
# Redis holds the digests in strings of exactly this many bytes, allocated once (SET) and filled in place
# (SETRANGE): APPEND would over-allocate as it grows. With its 10-byte header the string is a 64 KiB allocation.
CHUNK_BYTES: Final = 4368 * DIGEST_BYTES
HOUR_MS: Final = 3_600_000
# In memory a digest is two big-endian 64-bit words (the last byte zero), sorted by (high, low).
_WORDS = np.dtype(">u8")
Words = npt.NDArray[np.uint64]


def digest(carrier: str, event_id: str) -> bytes:
    """The dedup identity of an event: 120 bits of BLAKE2b over carrier and event_id (lastmile.correction)."""
    return correction.identity(carrier, event_id)


def hour_of(ms: int) -> int:
    return ms // HOUR_MS


class _Run:
    """Digests applied in one hour: sorted chunks merged as they grow, so a lookup costs a few binary searches."""

    __slots__ = ("chunks", "count")

    def __init__(self) -> None:
        self.chunks: list[tuple[Words, Words]] = []
        self.count = 0

    def add(self, high: Words, low: Words) -> None:
        order = np.lexsort((low, high))
        self.chunks.append((high[order], low[order]))
        self.count += len(high)
        # Merge while the newest chunk is at least half its predecessor: at most log2(n) chunks stay.
        while len(self.chunks) > 1 and len(self.chunks[-1][0]) * 2 >= len(self.chunks[-2][0]):
            (h2, l2), (h1, l1) = self.chunks.pop(), self.chunks.pop()
            high, low = np.concatenate((h1, h2)), np.concatenate((l1, l2))
            order = np.lexsort((low, high))
            self.chunks.append((high[order], low[order]))

    def holds(self, high: Words, low: Words) -> npt.NDArray[np.bool_]:
        found = np.zeros(len(high), dtype=bool)
        for run_high, run_low in self.chunks:
            at = np.searchsorted(run_high, high)
            inside = at < len(run_high)
            same_high = np.zeros(len(high), dtype=bool)
            same_high[inside] = run_high[at[inside]] == high[inside]
            # Two digests with the same high word (odds 2^-64 a pair) are checked one by one.
            for i in np.flatnonzero(same_high):
                j = int(at[i])
                while j < len(run_high) and run_high[j] == high[i]:
                    if run_low[j] == low[i]:
                        found[i] = True
                        break
                    j += 1
        return found


def split(packed: bytes) -> tuple[Words, Words]:
    rows = np.zeros((len(packed) // DIGEST_BYTES, 16), dtype=np.uint8)
    rows[:, :DIGEST_BYTES] = np.frombuffer(packed, dtype=np.uint8).reshape(-1, DIGEST_BYTES)
    words = rows.view(_WORDS)
    return words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64)


class Seen:
    """The digests one partition applied, by hour; those older than the window are forgotten."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.hours: dict[int, _Run] = {}

    def __len__(self) -> int:
        return sum(run.count for run in self.hours.values())

    def add(self, hour: int, packed: bytes) -> None:
        """Remember the digests in ``packed`` (:data:`DIGEST_BYTES` each) as applied in ``hour``."""
        if packed:
            self.hours.setdefault(hour, _Run()).add(*split(packed))

    def holds(self, packed: bytes) -> list[bool]:
        """For each digest in ``packed``, whether it was applied within the window."""
        if not packed or not self.hours:
            return [False] * (len(packed) // DIGEST_BYTES)
        high, low = split(packed)
        found = np.zeros(len(high), dtype=bool)
        for run in self.hours.values():
            found |= run.holds(high, low)
        return cast(list[bool], found.tolist())

    def forget_before(self, now_ms: int) -> None:
        """Drop the hours that Redis drops too: hour h expires at the end of h plus the window."""
        for hour in [h for h in self.hours if expires_at_ms(h, self.window_ms) <= now_ms]:
            del self.hours[hour]


def expires_at_ms(hour: int, window_ms: int) -> int:
    """When the digests applied in ``hour`` are forgotten: a repeat within the window is always recognised."""
    return (hour + 1) * HOUR_MS + window_ms


def window_hours(now_ms: int, window_ms: int) -> Iterable[int]:
    """The hours whose digests are still remembered at ``now_ms``, oldest first."""
    now_hour = hour_of(now_ms)
    first = hour_of(now_ms - window_ms) - 1
    return (h for h in range(first, now_hour + 1) if expires_at_ms(h, window_ms) > now_ms)
