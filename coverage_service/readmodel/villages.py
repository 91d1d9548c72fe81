"""The writer's memory of its villages' ``loc:`` hashes, so that a batch's decisions need no Redis read for them.

A village is written only by the writer holding its partition, and each write passes the apply script's offset
check, so what was read or written stays what Redis holds until the partition is read again (``forget``).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Village:
    offset_field: str  # its partition's
    fields: dict[str, int]  # its loc: hash
    stations: bool | None  # whether its station set is non-empty (None: not read)


class Villages:
    """At most ``capacity`` villages, the longest-held let go first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # OrderedDict: a dict whose first items keep being deleted makes next(iter()) scan their empty slots.
        self._held: OrderedDict[str, Village] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def get(self, code: str) -> Village | None:
        return self._held.get(code)

    def keep(self, code: str, village: Village) -> None:
        if self.capacity <= 0:
            return
        self._held[code] = village
        while len(self._held) > self.capacity:
            self._held.popitem(last=False)

    def written(self, locs: Mapping[str, list[Any]], stations: Iterable[str]) -> None:
        """What an apply call wrote: each village's new field values, and the villages given stations."""
        for code, writes in locs.items():
            village = self._held.get(code)
            if village is not None:
                pairs = iter(writes)
                village.fields.update(zip(pairs, pairs, strict=True))
        for code in stations:
            village = self._held.get(code)
            if village is not None:
                village.stations = True

    def drop(self, codes: Iterable[str]) -> None:
        """Let go of these villages (a correction rewrote them): they are read from Redis again."""
        for code in codes:
            self._held.pop(code, None)

    def forget(self, offset_fields: Iterable[str]) -> None:
        """Let go of the villages of these partitions: they are read from Redis again."""
        gone = set(offset_fields)
        if gone and self._held:
            self._held = OrderedDict((code, v) for code, v in self._held.items() if v.offset_field not in gone)


def village(offset_field: str, loc: Mapping[str, str], stations: int | None) -> Village:
    """A village as Redis holds it: its ``loc:`` hash (HGETALL) and, if read, the size of its station set."""
    return Village(
        offset_field,
        {sys.intern(k): int(v) for k, v in loc.items()},
        None if stations is None else stations > 0,
    )
