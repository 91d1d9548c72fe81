"""The read model's writer: drops repeats, decides a batch's changes from what Redis holds, then runs the apply script
once per shard (province) of the batch, writing its part with the shard's offsets and dedup digests in one step. It
knows, per partition and shard, the offset Redis holds, the digests applied, and the registry's word on codes seen."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import astuple, dataclass, replace

import msgspec.msgpack as msgpack
import redis.asyncio as aioredis
from redis.client import NEVER_DECODE
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.typing import EncodableT

from coverage_service import changes, dedup
from coverage_service.fold import Entry, Record, cst_day
from coverage_service.readmodel import registry_store, scripts, villages
from lastmile import backlog, names
from lastmile.divisions import KIND_VILLAGE

# The apply script's refusals: it writes nothing and fails with an error that starts with one of these.
REGISTRY_MISSING = "REGISTRY_MISSING"
READ_MODEL_BEHIND = "READ_MODEL_BEHIND"
READ_MODEL_AHEAD = "READ_MODEL_AHEAD"
REGISTRY_CHANGED = "REGISTRY_CHANGED"
NOT_LOADED = "the division registry is not loaded in Redis (lastmile registry load); waiting"
# Another writer moving the partition on while this one reads it again is retried this often, then raised.
AHEAD_RETRIES = 20


class RegistryMissing(Exception):
    """No whole registry in Redis: folding now would take every event for an unknown location."""


class ReadModelBehind(Exception):
    """Redis holds an older offset than this writer applied: it lost applied batches."""

    def __init__(self, message: str, offset_field: str, stored: int) -> None:
        super().__init__(message)
        self.offset_field = offset_field
        self.stored = stored


class ReadModelFull(Exception):
    """Redis refused the batch at maxmemory; nothing of it was written."""


@dataclass(frozen=True, slots=True)
class Applied:
    events_applied: int
    events_duplicate: int
    events_unknown_location: int
    records_applied: int
    records_replayed: int
    villages_newly_reached: int

    def __add__(self, other: Applied) -> Applied:
        return Applied(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


NOTHING = Applied(0, 0, 0, 0, 0, 0)


class ReadModelWriter:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        dedup_window_seconds: int,
        village_cache: int = 200_000,
        correction_window_days: int = 7,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.window_ms = dedup_window_seconds * 1000
        self.correction_window_days = correction_window_days
        self._apply = redis.register_script(scripts.source("apply.lua", prefix, prelude=True))
        self._units_script = redis.register_script(scripts.source("units.lua", prefix, prelude=True))
        self._villages_script = redis.register_script(scripts.source("villages.lua", prefix, prelude=True))
        # The registry's word on the codes seen, for one registry generation (reg:generation).
        self._units: dict[str, changes.Unit | None] = {}
        self._unit_values: dict[tuple[str, str], changes.Unit] = {}
        # Per shard, the registry generation the codes known of it were read in (None: read the registry again).
        self._generations: dict[str, str] | None = None
        self._tiers = ""
        # Per partition (offset field): per shard, the offset Redis holds (-1: none), and the digests applied up to
        # them, read by sync() or kept by apply(). The apply script checks a shard's offsets before it writes.
        self.positions: dict[str, dict[str, int]] = {}
        self.seen: dict[str, dedup.Seen] = {}
        self.shards: tuple[str, ...] = ()  # the registry's provinces
        self.villages = villages.Villages(village_cache)

    async def sync(self, offset_fields: Iterable[str]) -> dict[str, int]:
        """Read what Redis holds for these partitions in every shard (offsets and dedup digests); return, per
        partition, the offset up to which every shard applied it (-1: none).

        The offsets are read first: digests read after them are a superset of those up to them, and a writer that
        applied in between moved an offset, which the apply script's check catches.
        """
        fields = sorted(set(offset_fields))
        if not fields:
            return {}
        self.shards = shards = tuple(await backlog.shards(self.redis, self.prefix))
        now = _now_ms()
        hours = list(dedup.window_hours(now, self.window_ms))
        wanted = [(shard, ofield, hour) for shard in shards for ofield in fields for hour in hours]
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.hmget(names.shard_key(self.prefix, shard, names.OFFSETS), fields)
            for shard in shards:
                # MGET by name: a cluster pipeline refuses pipe.mget, though one shard's keys share a slot.
                pipe.execute_command(
                    "MGET", *(names.dedup_key(self.prefix, shard, f, h) for f in fields for h in hours)
                )
            replies = await pipe.execute()
        stored, filled = replies[: len(shards)], [n for reply in replies[len(shards) :] for n in reply]
        async with self.redis.pipeline(transaction=False) as pipe:
            for (shard, ofield, hour), used in zip(wanted, filled, strict=True):
                for chunk in range(-(-int(used or 0) // dedup.CHUNK_BYTES)):
                    # The digests are binary: left as bytes whatever the client decodes.
                    key = names.dedup_key(self.prefix, shard, ofield, hour, chunk)
                    pipe.execute_command("GET", key, **{NEVER_DECODE: True})
            chunks = iter(await pipe.execute())
        for ofield in fields:
            self.seen[ofield] = dedup.Seen(self.window_ms)
        for (_, ofield, hour), used in zip(wanted, filled, strict=True):
            n = int(used or 0)
            packed = b"".join(next(chunks) or b"" for _ in range(-(-n // dedup.CHUNK_BYTES)))
            self.seen[ofield].add(hour, packed[:n])
        self.villages.forget(fields)
        for i, ofield in enumerate(fields):
            self.positions[ofield] = {s: -1 if o[i] is None else int(o[i]) for s, o in zip(shards, stored, strict=True)}
        return {f: min(self.positions[f].values(), default=-1) for f in fields}

    def forget(self, keep: Iterable[str]) -> None:
        """Let go of the partitions not in ``keep`` (after a rebalance): their memory is another worker's now."""
        kept = set(keep)
        self._unsync([f for f in self.positions if f not in kept])

    async def lost(self) -> dict[str, int]:
        """The partitions whose applied batches Redis lost (it restarted from an older save, or was restored): per
        offset field, the last offset this writer applied. Their next apply would find them (READ_MODEL_BEHIND);
        this finds them when no record comes to apply."""
        fields = sorted(self.positions)
        if not fields or not self.shards:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards:
                pipe.hmget(names.shard_key(self.prefix, shard, names.OFFSETS), fields)
            stored = await pipe.execute()
        out: dict[str, int] = {}
        for shard, offsets in zip(self.shards, stored, strict=True):
            for ofield, offset in zip(fields, offsets, strict=True):
                known = self.positions[ofield].get(shard, -1)
                if (-1 if offset is None else int(offset)) < known:
                    out[ofield] = max(out.get(ofield, -1), max(self.positions[ofield].values()))
        return out

    def _unsync(self, offset_fields: Iterable[str]) -> None:
        """Drop what is known of these partitions: the next apply reads them from Redis again."""
        gone = list(offset_fields)
        for ofield in gone:
            self.positions.pop(ofield, None)
            self.seen.pop(ofield, None)
        self.villages.forget(gone)

    async def apply(self, records: list[Record]) -> Applied:
        """Fold ``records`` and store their offsets, atomically per shard; records a shard applied already are
        skipped there, and events whose (carrier, event_id) the partition applied within the dedup window are
        dropped.

        The changes are decided here (:mod:`coverage_service.changes`) from the registry and the villages' state,
        read first; a shard's apply call refuses its part, writing nothing, if either changed since, and it is
        decided again. :class:`ReadModelBehind` when Redis lost batches this writer applied (its position is read
        again first); :class:`RegistryMissing` while no whole registry is loaded; :class:`ReadModelFull` at
        maxmemory. Shards whose call succeeded before one of these keep their part, and skip it when the records
        come again.
        """
        if not records:
            return NOTHING
        fields = {r.offset_field for r in records}
        done, ahead = NOTHING, 0
        while True:
            missing = [f for f in fields if f not in self.positions]
            if missing:
                await self.sync(missing)
            now = _now_ms()
            hour = dedup.hour_of(now)
            kept = self._drop_repeats(records, now)
            units = await self.units({e.location_code for r in kept for e in r.entries})
            if any(tuple(self.positions[f]) != self.shards for f in fields):
                await self.sync(fields)  # a registry load brought a province: a new shard
                continue
            first = self.shards[0]
            parts: dict[str, changes.Gathered] = {}
            for shard, part in self._parts(kept).items():
                positions = {f: self.positions[f][shard] for f in fields}
                g = parts[shard] = changes.gather(part, units, positions, now)
                if shard != first:  # records count in the first shard's part
                    g.records_applied = g.records_replayed = 0
            held = await self._held({code: loc for g in parts.values() for code, loc in g.villages().items()})
            expire_at_s = dedup.expires_at_ms(hour, self.window_ms) // 1000
            calls: list[tuple[str, changes.Gathered, changes.Changes]] = []
            script_calls: list[tuple[list[str], list[EncodableT]]] = []
            for shard, g in parts.items():
                decided = changes.resolve(g, units, held)
                expect = {f: self.positions[f][shard] for f in fields}
                generation = (self._generations or {}).get(shard, "")
                args = changes.payload(shard, g, decided, expect, generation, hour, expire_at_s)
                script_calls.append(([self._routing_key(shard)], [now, *args]))
                calls.append((shard, g, decided))
            results = await scripts.call_each(self.redis, self._apply, script_calls, raise_on_error=False)
            failure: Exception | None = None
            for (shard, g, decided), result in zip(calls, results, strict=True):
                if isinstance(result, Exception):
                    failure = failure or result
                    continue
                self._remember(shard, g, hour)
                self.villages.written(decided.locs, decided.stations)
                done += Applied(
                    g.applied, g.duplicate, g.unknown, g.records_applied, g.records_replayed, decided.newly_reached
                )
            if failure is None:
                return done
            if isinstance(failure, OutOfMemoryError):
                # Redis refuses a script at its first write when over maxmemory, so nothing of that part was written.
                raise ReadModelFull(str(failure)) from failure
            if not isinstance(failure, ResponseError):
                raise failure
            word, _, detail = str(failure).partition(" ")
            if word == REGISTRY_CHANGED:
                self._forget_units()
                continue
            if word == READ_MODEL_AHEAD:
                ahead += 1
                if ahead >= AHEAD_RETRIES:
                    raise RuntimeError(f"partitions {sorted(fields)} kept moving on under another writer") from failure
                await self.sync([detail.split(" ", 1)[0]])
                continue
            if word == READ_MODEL_BEHIND:
                ofield = detail.partition(" stored ")[0]
                # Only this partition: another one behind is found by the next call, and must be, for its lost
                # records to be folded again.
                stored = (await self.sync([ofield]))[ofield]
                raise ReadModelBehind(str(failure), ofield, stored) from failure
            if word == REGISTRY_MISSING:
                raise RegistryMissing(str(failure)) from failure
            raise failure

    def correction_window(self, now_ms: int) -> tuple[int, int]:
        """The first CST day whose accepted events are still withdrawable, and today's (docs/corrections.md)."""
        today = cst_day(now_ms)
        return today - self.correction_window_days + 1, today

    def _parts(self, records: list[Record]) -> dict[str, list[Record]]:
        """Each shard's part of a batch: every record, with its events at the shard's codes (codes of no shard go
        to the first shard, where they count as unknown); duplicates and dead letters count in the first's part."""
        first = self.shards[0]
        parts: dict[str, list[Record]] = {shard: [] for shard in self.shards}
        for r in records:
            by_shard: dict[str, list[Entry]] = {}
            for e in r.entries:
                shard = e.location_code[:2]
                by_shard.setdefault(shard if shard in parts else first, []).append(e)
            for shard, part in parts.items():
                entries = by_shard.get(shard, [])
                if shard == first:
                    part.append(replace(r, entries=entries))
                else:
                    part.append(replace(r, entries=entries, duplicates=0, dead_letters=0))
        return parts

    def _drop_repeats(self, records: list[Record], now: int) -> list[Record]:
        """The records with the entries their partition applied before, or that came earlier in this batch, taken
        out (counted in ``duplicates``). Entries of a shard that applied their record already are left for it to
        skip (a batch that only some shards applied, coming again)."""
        out: list[Record] = []
        batch: dict[str, set[bytes]] = {}
        for ofield in {r.offset_field for r in records}:
            self.seen[ofield].forget_before(now)
        for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
            positions = self.positions[r.offset_field]
            if not r.entries or r.offset <= min(positions.values(), default=-1):
                out.append(r)  # a replay in every shard: skipped whole
                continue
            applied_in = {s for s, offset in positions.items() if r.offset <= offset}
            seen_now = batch.setdefault(r.offset_field, set())
            held = self.seen[r.offset_field].holds(b"".join(e.digest for e in r.entries))
            entries = []
            for e, was in zip(r.entries, held, strict=True):
                if applied_in and e.location_code[:2] in applied_in:
                    entries.append(e)
                elif not was and e.digest not in seen_now:
                    seen_now.add(e.digest)
                    entries.append(e)
            out.append(replace(r, entries=entries, duplicates=r.duplicates + len(r.entries) - len(entries)))
        return out

    def _remember(self, shard: str, gathered: changes.Gathered, hour: int) -> None:
        for ofield, offset in gathered.offsets.items():
            self.positions[ofield][shard] = offset
            self.seen[ofield].add(hour, b"".join(gathered.digests.get(ofield, ())))

    async def _held(self, batch: dict[str, changes.Location]) -> dict[str, villages.Village]:
        """What the villages of a batch hold now: from memory, or read from Redis (the loc: hash whole, and the
        size of the station set when the batch brings stations). The apply script checks that no other writer
        moved their partitions on since (a village is written only by its partition's writer)."""
        known: dict[str, villages.Village] = {}
        unread: list[tuple[str, str]] = []  # (village, offset field)
        uncounted: list[str] = []
        for code, loc in batch.items():
            v = self.villages.get(code)
            if v is None:
                unread.append((code, loc.offset_field))
                if loc.stations:
                    uncounted.append(code)
            else:
                known[code] = v
                if loc.stations and v.stations is None:
                    uncounted.append(code)
        if not unread and not uncounted:
            return known
        by_shard: dict[str, tuple[list[tuple[str, str]], list[str]]] = {}  # one call per shard: one slot each
        for code, ofield in unread:
            by_shard.setdefault(code[:2], ([], []))[0].append((code, ofield))
        for code in uncounted:
            by_shard.setdefault(code[:2], ([], []))[1].append(code)
        replies = await scripts.call_each(
            self.redis,
            self._villages_script,
            [
                ([self._routing_key(shard)], [msgpack.encode([code for code, _ in reads]), msgpack.encode(counts)])
                for shard, (reads, counts) in by_shard.items()
            ],
        )
        for (reads, counts), reply in zip(by_shard.values(), replies, strict=True):
            for (code, ofield), flat in zip(reads, reply[: len(reads)], strict=True):
                known[code] = villages.village(ofield, dict(zip(flat[::2], flat[1::2], strict=True)), None)
                self.villages.keep(code, known[code])
            for code, n in zip(counts, reply[len(reads) :], strict=True):
                known[code].stations = int(n) > 0
        return known

    async def units(self, codes: Collection[str]) -> Mapping[str, changes.Unit | None]:
        """The registry's kind and segments of each code (None: not in the registry), kept per shard and registry
        generation; the mapping returned holds every code asked for, and may hold others. :class:`RegistryMissing`
        while no whole registry is loaded (after a wipe, or during the first load)."""
        while True:
            if self._generations is None:
                await self._read_registry()
            generations = self._generations
            assert generations is not None
            unread: dict[str, list[str]] = {}  # shard -> codes
            shards = frozenset(self.shards)
            for code in codes:
                if code in self._units:
                    continue
                if code[:2] in shards:
                    unread.setdefault(code[:2], []).append(code)
                else:
                    self._units[code] = None  # of no province of the registry
            if not unread:
                return self._units
            replies = await scripts.call_each(
                self.redis,
                self._units_script,
                [([self._routing_key(s)], [msgpack.encode(wanted), s, self._tiers]) for s, wanted in unread.items()],
            )
            for (shard, wanted), reply in zip(unread.items(), replies, strict=True):
                generation = str(reply[0])
                if not generation:
                    raise RegistryMissing(NOT_LOADED)
                if generations.setdefault(shard, generation) != generation:
                    break  # a registry load ran: what is known may belong to another edition
                for i, code in enumerate(wanted):
                    kind, segments = str(reply[1 + 2 * i]), str(reply[2 + 2 * i])
                    self._units[code] = self._unit(kind, segments) if kind else None
            else:
                continue
            self._forget_units()

    async def _read_registry(self) -> None:
        """What the worker needs of the registry as a whole: that a whole one is loaded in this key layout, its
        population tiers and its provinces (the shards)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(names.key(self.prefix, names.REG_META))
            pipe.get(names.key(self.prefix, names.LAYOUT))
            pipe.hget(names.key(self.prefix, names.REG_META), names.meta.POPULATION_TIERS)
            loaded, layout, tiers = await pipe.execute()
        if not loaded:
            raise RegistryMissing(NOT_LOADED)
        if layout != names.LAYOUT_VERSION:
            raise RegistryMissing(registry_store.layout_mismatch(self.prefix, None if layout is None else str(layout)))
        self._tiers = str(tiers or "")
        self.shards = tuple(await backlog.shards(self.redis, self.prefix))
        # Every shard's generation: a batch's part for a shard none of whose codes were looked up is checked too.
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in self.shards:
                pipe.get(self._routing_key(shard))
            copies = await pipe.execute()
        self._generations = {s: str(g) for s, g in zip(self.shards, copies, strict=True) if g}

    def _unit(self, kind: str, segments: str) -> changes.Unit:
        """One shared Unit per (kind, segments): there are a handful, for some hundred thousand codes."""
        unit = self._unit_values.get((kind, segments))
        if unit is None:
            parts = tuple(segments.split(",")) if kind == KIND_VILLAGE else ()
            unit = self._unit_values[(kind, segments)] = changes.Unit(kind, parts)
        return unit

    def _forget_units(self) -> None:
        self._units = {}
        self._generations = None

    async def unknown_locations(self, codes: set[str]) -> set[str]:
        """The codes the registry does not hold; :class:`RegistryMissing` while no whole registry is loaded
        (after a wipe, or during the first load), when every code would look unknown."""
        units = await self.units(codes)
        return {code for code in codes if units[code] is None}

    async def forget_offset(self, topic: str, partition: int) -> None:
        """Clear the partition's offset in every shard: its log starts over."""
        ofield = names.offset_field(topic, partition)
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard in await backlog.shards(self.redis, self.prefix):
                pipe.hdel(names.shard_key(self.prefix, shard, names.OFFSETS), ofield)
            await pipe.execute()
        if ofield in self.positions:
            self.positions[ofield] = dict.fromkeys(self.positions[ofield], -1)

    def _routing_key(self, shard: str) -> str:
        """The key a shard's script calls name (and do not use): a cluster client sends them to its master."""
        return names.shard_key(self.prefix, shard, names.REG_GENERATION)

    async def applied_offsets(self) -> dict[str, int]:
        return await backlog.applied_offsets(self.redis, self.prefix)


def _now_ms() -> int:
    return int(time.time() * 1000)
