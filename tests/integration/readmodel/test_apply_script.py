"""The writer and its apply script against a real Redis: exact figures under duplicates, replays and disorder.

Expected figures come from a reference written out in this file (sets and counters), never from the
code under test.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from coverage_service import dedup, fold
from coverage_service.readmodel.writer import ReadModelBehind, ReadModelWriter, RegistryMissing
from lastmile import names, scan
from lastmile.settings import Settings
from lastmile.topics import partition_for
from tests.support import seeded, stored
from tests.support.events import NOW, make_event

pytestmark = pytest.mark.integration

VILLAGES = ["140322205206", "140322205207", "140322100201", "411702001200"]
COMMUNITY = "140322205208"
TOWNSHIP = "140322205"
KINDS = {**{v: "village" for v in VILLAGES}, COMMUNITY: "community", TOWNSHIP: "township", "140322100": "township"}


async def seed_registry(redis: aioredis.Redis, prefix: str) -> None:
    await seeded.seed_registry(redis, prefix, KINDS)


def record(partition: int, offset: int, events: list[scan.ScanEvent]) -> fold.Record:
    return fold.Record("scans", partition, offset, [fold.entry(e) for e in events])


async def region(redis: aioredis.Redis, prefix: str, code: str) -> dict[str, str]:
    return dict(await redis.hgetall(names.key(prefix, names.REGION, code)))


async def test_a_batch_counts_once_and_a_replay_changes_nothing(redis: aioredis.Redis, settings: Settings) -> None:
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    writer = ReadModelWriter(redis, p, 3600)
    events = [
        make_event(1, "sf", "delivered", VILLAGES[0], 5),
        make_event(2, "sf", "picked_up", VILLAGES[0], 9),  # earlier: becomes first reach
        make_event(3, "yto", "collected", VILLAGES[1], 1),
        make_event(4, "sf", "arrived_at_hub", TOWNSHIP, 2),
        make_event(5, "sf", "delivered", COMMUNITY, 3),  # a community: counted parcels, no coverage
        make_event(6, "sf", "out_for_delivery", VILLAGES[2], 4),  # not a reach event
    ]
    records = [record(0, 10, events[:3]), record(1, 4, events[3:])]
    first = await writer.apply(records)
    assert (first.events_applied, first.events_duplicate, first.records_applied) == (6, 0, 2)
    assert first.villages_newly_reached == 2

    async def snapshot() -> dict[str, object]:
        keys = sorted(k for k in await redis.keys(f"{p}:*") if ":dedup:" not in k and not k.endswith(":stats"))
        out: dict[str, object] = {}
        for k in keys:
            kind = await redis.type(k)
            if kind == "hash":
                out[k] = dict(await redis.hgetall(k))
            else:
                out[k] = await redis.zrange(k, 0, -1, withscores=True) if kind == "zset" else await redis.dump(k)
        return out

    before = await snapshot()
    again = await writer.apply(records)
    assert (again.events_applied, again.records_replayed) == (0, 2)
    assert await snapshot() == before

    county = await region(redis, p, "140322")
    assert county["villages_reached"] == "2"
    assert county["villages_reached|carrier:sf"] == "1"
    assert county["villages_reached|carrier:yto"] == "1"
    assert county["type:delivered"] == "2"  # the village and the community
    assert "dir:inbound" not in county  # inbound and outbound are derived from the type counters when read
    assert county["as_of_ms"] == str(int((NOW - timedelta(hours=1)).timestamp() * 1000))
    assert (await stored.nation(redis, p))["villages_reached"] == "2"
    assert "villages_reached" not in await region(redis, p, "140322100")  # reached nothing there
    village = await redis.hgetall(names.key(p, names.LOCATION, VILLAGES[0]))
    assert village["first_reach_ms"] == str(int((NOW - timedelta(hours=9)).timestamp() * 1000))
    assert village["last_reach_ms"] == str(int((NOW - timedelta(hours=5)).timestamp() * 1000))
    assert (await redis.hgetall(names.key(p, names.LOCATION, COMMUNITY)))["reached"] == "1"
    assert await stored.offsets(redis, p) == {"scans:0": 10, "scans:1": 4}


async def test_resent_events_are_dropped_but_other_carriers_ids_are_not(
    redis: aioredis.Redis, settings: Settings
) -> None:
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    writer = ReadModelWriter(redis, p, 3600)
    e = make_event(1, "sf", "delivered", VILLAGES[0], 1)
    same_id_other_carrier = make_event(1, "yto", "delivered", VILLAGES[0], 1)
    await writer.apply([record(0, 0, [e])])
    second = await writer.apply([record(0, 1, [e, e]), record(2, 0, [same_id_other_carrier])])
    assert (second.events_applied, second.events_duplicate) == (1, 2)
    assert (await redis.hgetall(names.key(p, names.LOCATION, VILLAGES[0])))["type:delivered"] == "2"
    base, chunk = sorted(await redis.keys(names.dedup_key(p, VILLAGES[0][:2], "scans:0", "*")))
    assert chunk == base + ":0"
    assert await redis.get(base) == str(dedup.DIGEST_BYTES)  # one digest: e, once
    assert await redis.strlen(chunk) == dedup.CHUNK_BYTES  # allocated whole
    for key in (base, chunk):
        assert 3600 < await redis.ttl(key) <= 2 * 3600  # the rest of this hour, then the window
    # A new writer (a restarted worker) reads the partition's memory from Redis and still drops the repeat.
    restarted = await ReadModelWriter(redis, p, 3600).apply([record(0, 2, [e])])
    assert (restarted.events_applied, restarted.events_duplicate) == (0, 1)
    assert (await stored.stats(redis, p))["events_duplicate"] == 3


async def test_digests_spanning_several_strings_are_all_remembered(redis: aioredis.Redis, settings: Settings) -> None:
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    writer = ReadModelWriter(redis, p, 3600)
    per_string = dedup.CHUNK_BYTES // dedup.DIGEST_BYTES
    events = [make_event(i, "sf", "delivered", VILLAGES[i % 3], 1) for i in range(per_string * 2 + 7)]
    await writer.apply([record(0, 0, events[:5])])
    await writer.apply([record(0, 1, events[5:])])  # fills the first string and crosses into a third
    assert len(await redis.keys(names.dedup_key(p, "14", "scans:0", "*"))) == 4  # VILLAGES[:3] are in 14
    again = await ReadModelWriter(redis, p, 3600).apply([record(0, 2, events[::-1])])
    assert (again.events_applied, again.events_duplicate) == (0, len(events))


async def test_unknown_locations_are_not_counted_nor_remembered(redis: aioredis.Redis, settings: Settings) -> None:
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    writer = ReadModelWriter(redis, p, 3600)
    stray = make_event(1, "sf", "delivered", "999999999999", 1)
    result = await writer.apply([record(0, 0, [stray])])
    assert (result.events_applied, result.events_unknown_location) == (0, 1)
    assert await redis.keys(names.pattern(p, names.DEDUP)) == []  # so a corrected resend is not taken for a repeat
    assert await stored.offsets(redis, p) == {"scans:0": 0}
    assert await writer.unknown_locations({"999999999999", VILLAGES[0]}) == {"999999999999"}


async def test_random_streams_with_duplicates_and_replays_match_the_reference(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Many random deliveries of one event log, cut into records, replayed and resent at random."""
    rng = random.Random(20261122)
    types = list(scan.EVENT_TYPES)
    for trial in range(15):
        p = f"{settings.redis_key_prefix}-{trial}"
        await seed_registry(redis, p)
        # The writer's memory of villages: none, one village (always letting go), or room for all.
        writer = ReadModelWriter(redis, p, 3600, village_cache=(0, 1, 1000)[trial % 3])
        log: list[scan.ScanEvent] = []
        for i in range(rng.randint(20, 120)):
            event_type = rng.choice(types)
            code = (
                rng.choice([*VILLAGES, COMMUNITY])
                if event_type in scan.VILLAGE_ONLY_TYPES
                else rng.choice([*VILLAGES, TOWNSHIP])
            )
            log.append(make_event(i, rng.choice(["sf", "yto"]), event_type, code, rng.randint(0, 500)))
        # The carrier resends some events: same (carrier, event_id), later in the log.
        log += [rng.choice(log) for _ in range(rng.randint(0, 30))]
        # Reference figures, computed from the distinct events.
        distinct = {(e.carrier, e.event_id): e for e in log}
        reached = {e.location_code for e in distinct.values() if e.reaches and KINDS[e.location_code] == "village"}
        types_in_county = Counter(e.event_type for e in distinct.values())

        # Partition the log by location as ingest does, cut into records, deliver with replays of earlier records.
        partitions: dict[int, list[fold.Record]] = {0: [], 1: [], 2: []}
        for part in partitions:
            mine = [e for e in log if partition_for(e.location_code, 3) == part]
            i = 0
            while i < len(mine):
                n = rng.randint(1, 8)
                partitions[part].append(record(part, len(partitions[part]), mine[i : i + n]))
                i += n
        cursor = {0: 0, 1: 0, 2: 0}
        while any(cursor[k] < len(partitions[k]) for k in partitions):
            batch: list[fold.Record] = []
            for part, recs in partitions.items():
                if cursor[part] < len(recs):
                    take = rng.randint(0, 3)
                    # A replay restarts a little before the cursor, as after a crash.
                    start = max(0, cursor[part] - rng.randint(0, 2))
                    batch += recs[start : cursor[part] + take]
                    cursor[part] = min(len(recs), cursor[part] + take)
            if batch:
                # The worker never sends one record twice in a call; replays come in separate calls.
                unique = {(r.partition, r.offset): r for r in batch}
                await writer.apply(list(unique.values()))

        county = await region(redis, p, "140322")
        nation = await stored.nation(redis, p)
        expected_county = sum(1 for v in reached if v.startswith("140322"))
        assert int(county.get("villages_reached", 0)) == expected_county, trial
        assert int(nation.get("villages_reached", 0)) == len(reached), trial
        for t in types:
            assert int(nation.get(f"type:{t}", 0)) == types_in_county[t], (trial, t)
        assert (await stored.stats(redis, p))["events_applied"] == len(distinct)


async def test_a_read_model_that_lost_applied_batches_stops_the_call(redis: aioredis.Redis, settings: Settings) -> None:
    """Redis holding less than the writer applied (it lost writes) stops the call, writing nothing; the writer reads
    the partition again, so folding the lost records from the topic goes through."""
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    writer = ReadModelWriter(redis, p, 3600)
    await writer.apply([record(0, 4, [make_event(1, "sf", "delivered", VILLAGES[0], 1)])])
    await writer.apply([record(0, 7, [make_event(2, "sf", "delivered", VILLAGES[2], 1)])])
    await stored.set_offsets(redis, p, {"scans:0": 4})  # as after a restart that lost the last write
    before = await stored.nation(redis, p)
    with pytest.raises(ReadModelBehind, match="READ_MODEL_BEHIND scans:0 stored 4 applied 7") as lost:
        await writer.apply([record(0, 8, [make_event(3, "sf", "delivered", VILLAGES[1], 1)])])
    assert (lost.value.offset_field, lost.value.stored) == ("scans:0", 4)
    assert await stored.nation(redis, p) == before
    assert await stored.offsets(redis, p) == {"scans:0": 4}
    assert set(writer.positions["scans:0"].values()) == {4}
    applied = await writer.apply([record(0, 5, [make_event(3, "sf", "delivered", VILLAGES[1], 1)])])
    assert applied.events_applied == 1


async def test_each_partition_that_lost_batches_is_reported_in_turn(redis: aioredis.Redis, settings: Settings) -> None:
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    writer = ReadModelWriter(redis, p, 3600)
    await writer.apply([record(0, 3, [make_event(1, "sf", "delivered", VILLAGES[0], 1)])])
    await writer.apply([record(1, 5, [make_event(2, "sf", "delivered", VILLAGES[1], 1)])])
    await stored.set_offsets(redis, p, {"scans:0": 1, "scans:1": 2})  # both lost their last batch
    batch = [record(0, 4, [make_event(3, "sf", "delivered", VILLAGES[2], 1)]), record(1, 6, [])]
    lost = []
    for _ in range(2):
        with pytest.raises(ReadModelBehind) as behind:
            await writer.apply(batch)
        lost.append((behind.value.offset_field, behind.value.stored))
    assert sorted(lost) == [("scans:0", 1), ("scans:1", 2)]


async def test_two_writers_overlapping_on_a_partition_count_each_event_once(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Two workers overlap on a partition in a rebalance: the old one applies after the new one read the
    partition. The new one's next call is refused (READ_MODEL_AHEAD), it reads the partition again and drops
    the repeat the old one applied meanwhile."""
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    old, new = ReadModelWriter(redis, p, 3600), ReadModelWriter(redis, p, 3600)
    first, repeated = make_event(1, "sf", "delivered", VILLAGES[0], 1), make_event(2, "sf", "delivered", VILLAGES[1], 1)
    await old.apply([record(0, 0, [first])])
    assert await new.sync(["scans:0"]) == {"scans:0": 0}
    await old.apply([record(0, 1, [repeated])])
    result = await new.apply([record(0, 1, [repeated]), record(0, 2, [repeated, first])])
    assert (result.events_applied, result.records_replayed, result.events_duplicate) == (0, 1, 2)
    assert (await stored.nation(redis, p))["type:delivered"] == "2"
    assert set(new.positions["scans:0"].values()) == {2}


async def test_a_writer_overtaken_on_a_partition_reads_its_villages_again(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """A writer's memory of a village goes stale when another applies its partition: the script refuses the
    decisions made on it, and the writer reads the village again."""
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    a, b = ReadModelWriter(redis, p, 3600), ReadModelWriter(redis, p, 3600)
    v = VILLAGES[0]
    await a.apply([record(0, 0, [make_event(1, "sf", "delivered", v, 5)])])
    assert a.villages.get(v) is not None  # remembered
    await b.apply([record(0, 1, [make_event(2, "yto", "delivered", v, 3), make_event(3, "sf", "picked_up", v, 2)])])
    await a.apply([record(0, 2, [make_event(4, "zto", "delivered", v, 1)])])
    loc = await redis.hgetall(names.key(p, names.LOCATION, v))
    assert (loc["type:delivered"], loc["type:picked_up"]) == ("3", "1")
    assert (loc["carrier:sf"], loc["carrier:yto"], loc["carrier:zto"]) == ("2", "1", "1")
    assert loc["last_reach_ms"] == str(int((NOW - timedelta(hours=1)).timestamp() * 1000))
    nation = await stored.nation(redis, p)
    assert nation["villages_reached"] == nation["villages_reached|carrier:yto"] == "1"
    assert nation["villages_reached|carrier:zto"] == nation["villages_reached|carrier:sf"] == "1"
    assert nation["type:delivered"] == "3"


async def test_without_a_whole_registry_the_script_writes_nothing_and_says_so(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """A wipe between the worker's registry lookup and its apply call: the script refuses, and the writer raises
    RegistryMissing (the worker waits on it), not a bare ResponseError."""
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    writer = ReadModelWriter(redis, p, 3600)
    assert await writer.unknown_locations({VILLAGES[0]}) == set()  # looked up, and known
    # The wipe (a first load under way writes neither: reg:meta and the shards' generations are written last).
    wiped = [names.key(p, names.REG_META), *await redis.keys(names.pattern(p, names.REG_GENERATION))]
    await redis.delete(*wiped)
    left = sorted(await redis.keys(f"{p}:*"))
    with pytest.raises(RegistryMissing, match="REGISTRY_MISSING"):
        await writer.apply([record(0, 0, [make_event(1, "sf", "delivered", VILLAGES[0], 1)])])
    assert sorted(await redis.keys(f"{p}:*")) == left  # nothing written
    with pytest.raises(RegistryMissing):
        await ReadModelWriter(redis, p, 3600).unknown_locations({VILLAGES[0]})


async def test_a_registry_load_between_lookup_and_apply_is_seen_and_the_batch_decided_again(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """The writer decides a batch on the registry it read; a load that reclassifies a unit meanwhile changes the
    generation, the script refuses, and the batch is decided again on the new kinds."""
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    writer = ReadModelWriter(redis, p, 3600)
    assert await writer.unknown_locations({COMMUNITY}) == set()  # known, as a community
    await stored.set_kinds(redis, p, {COMMUNITY: "village"})  # what a load reclassifying it writes...
    for key in await redis.keys(names.pattern(p, names.REG_GENERATION)):
        await redis.set(key, "a later load")  # ...with its generation, and every shard's copy
    await writer.apply([record(0, 0, [make_event(1, "sf", "delivered", COMMUNITY, 1)])])
    assert (await region(redis, p, TOWNSHIP)).get("villages_reached") == "1"  # counted as the village it now is


async def test_a_batch_only_some_shards_applied_is_finished_by_the_others_and_counted_once(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """A batch spans two shards (provinces 14 and 41); one shard's call is refused (another writer moved its offset
    on), the other's goes through. The writer reads the partition again and applies the refused part only: the
    applied shard skips the record, and no event is counted twice or taken for a repeat."""
    p = settings.redis_key_prefix
    await seed_registry(redis, p)
    writer = ReadModelWriter(redis, p, 3600)
    await writer.apply([record(0, 0, [make_event(1, "sf", "delivered", VILLAGES[0], 1)])])
    # Another writer applied offset 1 in shard 41 only (as its call succeeded and the 14 one had not run yet).
    other = ReadModelWriter(redis, p, 3600)
    in_41 = make_event(2, "sf", "delivered", VILLAGES[3], 1)
    await other.sync(["scans:0"])
    await other.apply([record(0, 1, [in_41])])
    await stored.set_offsets(redis, p, {"scans:0": 0})
    await redis.hset(names.shard_key(p, "41", names.OFFSETS), "scans:0", 1)
    batch = [record(0, 1, [in_41, make_event(3, "sf", "delivered", VILLAGES[1], 1)])]
    result = await writer.apply(batch)
    assert (result.events_applied, result.events_duplicate) == (1, 0)
    assert await stored.offsets(redis, p) == {"scans:0": 1}
    nation = await stored.nation(redis, p)
    assert (nation["villages_reached"], nation["type:delivered"]) == ("3", "3")
    assert (await stored.stats(redis, p))["events_applied"] == 3
