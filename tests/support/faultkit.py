"""Shared helpers of the fault tests: seeded randomness, an event stream with repeats, the test's own count of
what the figures must be, the read model as stored in Redis, and polling with deadlines.

The expected figures are computed here from the events the test sent, by the definitions
(docs/reading-coverage.md) written out again (reached = any arrived_at_station / delivered / picked_up / collected
at an administrative village; counts are sums; first/last reach are the min/max; as_of is the newest occurred_at in
the region), never with the code under test. The read model is read back whole (every region and location hash,
lapse index and the stats), so a figure counted twice or lost anywhere shows, not only in the national totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import redis.asyncio as aioredis

from ingest_service.publisher import Publisher
from lastmile import names, scan
from lastmile.settings import Settings
from tests.support import stored
from tests.support.services import sample_units, sample_villages

log = logging.getLogger("tests.faults")
T = TypeVar("T")

REACH = frozenset({"arrived_at_station", "delivered", "picked_up", "collected"})
VOLUME = frozenset({"delivered", "picked_up", "collected"})
TYPES = (
    "arrived_at_hub",
    "out_for_delivery",
    "arrived_at_station",
    "delivered",
    "delivered",
    "picked_up",
    "collected",
    "delivery_failed",
)
MODELS = ("postal_express", "transport_express", "own_station", "other")
CST = timezone(timedelta(hours=8))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A county of the bundled sample: its administrative villages (code -> township) and every village-level
# unit (communities and other units too: their parcels count, but they are in no village figure).
COUNTY = "140322"
VILLAGES: dict[str, str] = sample_villages(lambda row: row["areaCode"] == COUNTY)
UNITS: list[str] = sorted(sample_units(lambda row: row["areaCode"] == COUNTY))
TOWNSHIPS: list[str] = sorted(set(VILLAGES.values()))


def seeded(test: str) -> tuple[random.Random, int]:
    """A random generator for one test; ``FAULT_SEED=<n>`` replays a failed run's choices."""
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(2**31))
    print(f"{test}: FAULT_SEED={seed}")  # shown by pytest with a failure's captured output
    log.warning("%s: FAULT_SEED=%d", test, seed)
    return random.Random(seed), seed


def kill_points(default: int = 5) -> int:
    return int(os.environ.get("FAULT_KILL_POINTS") or default)


def millis(moment: datetime) -> int:
    """Milliseconds since the epoch, in integers (no float rounding)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


# -- events -----------------------------------------------------------------------------------------------


@dataclass
class EventMaker:
    """Random valid scan events of the sample county with unique event_ids, times within ``max_age``."""

    rng: random.Random
    tag: str
    carriers: Sequence[str] = ("sf",)
    max_age: timedelta = timedelta(days=3)
    units: Sequence[str] = field(default_factory=lambda: UNITS)
    made: int = 0

    def event(
        self, *, age: timedelta | None = None, code: str | None = None, kind: str | None = None
    ) -> dict[str, Any]:
        rng = self.rng
        i = self.made
        self.made += 1
        event_type = kind or rng.choice(TYPES)
        code = code or rng.choice(self.units)
        if event_type in ("arrived_at_hub", "out_for_delivery") and rng.random() < 0.5:
            code = code[:9]  # at the township
        if age is None:
            age = timedelta(milliseconds=rng.randrange(int(self.max_age / timedelta(milliseconds=1))))
        moment = datetime.now(UTC) - age
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        carrier = rng.choice(self.carriers)
        event: dict[str, Any] = {
            "event_id": f"{self.tag}-{i}",
            "carrier": carrier,
            "waybill": f"W{self.tag}{i}",
            "event_type": event_type,
            "location_code": code,
            "occurred_at": moment.astimezone(CST if rng.random() < 0.5 else UTC).isoformat(timespec="milliseconds"),
        }
        if event_type == "delivery_failed":
            event["reason"] = "recipient not at home"
        if len(code) == 12 and rng.random() < 0.3:
            event["station_id"] = f"st-{code[-3:]}"
        if rng.random() < 0.4:
            event["cooperation_model"] = rng.choice(MODELS)
        return event

    def events(self, n: int) -> list[dict[str, Any]]:
        return [self.event() for _ in range(n)]


def to_scan(raw: dict[str, Any]) -> scan.ScanEvent:
    result = scan.validate(raw, now=datetime.now(UTC))
    assert isinstance(result, scan.ScanEvent), (raw, result)
    return result


# -- the expected figures ---------------------------------------------------------------------------------


def regions_of(code: str) -> list[str]:
    return [code[:9], code[:6], code[:4], code[:2], names.NATIONAL]


@dataclass
class Expected:
    """The test's own count of everything sent: what the read model must hold in the end."""

    sent: int = 0
    distinct: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    villages: Mapping[str, str] = field(default_factory=lambda: VILLAGES)  # the administrative villages sent to

    def add(self, events: Iterable[dict[str, Any]]) -> None:
        for e in events:
            self.sent += 1
            key = (e["carrier"], e["event_id"])
            first = self.distinct.setdefault(key, e)
            assert first == e, f"the test re-sent {key} with other content"

    @property
    def duplicates(self) -> int:
        return self.sent - len(self.distinct)

    def figures(self) -> dict[str, Any]:
        regions: dict[str, Counter[str]] = defaultdict(Counter)
        as_of: dict[str, int] = {}
        locs: dict[str, Counter[str]] = defaultdict(Counter)
        first: dict[str, int] = {}
        last: dict[str, dict[str, int]] = defaultdict(dict)  # village -> flag suffix -> last reach
        for e in self.distinct.values():
            code, kind = e["location_code"], e["event_type"]
            moment = datetime.fromisoformat(e["occurred_at"])
            ms = millis(moment)
            counters = [f"type:{kind}", f"carrier:{e['carrier']}"]
            dims = [f"carrier:{e['carrier']}"]
            if kind in VOLUME:
                counters.append(f"vol:{moment.astimezone(CST).year}")
            if e.get("cooperation_model"):
                counters.append(f"model:{e['cooperation_model']}")
                dims.append(f"model:{e['cooperation_model']}")
            for r in regions_of(code):
                regions[r].update(counters)
                as_of[r] = max(as_of.get(r, ms), ms)
            if len(code) != 12:
                continue
            locs[code].update(counters)
            if kind in REACH:
                first[code] = min(first.get(code, ms), ms)
                for suffix in ["", *(names.field.DIM_SEP + d for d in dims)]:
                    last[code][suffix] = max(last[code].get(suffix, ms), ms)
        indexes: dict[str, dict[str, int]] = defaultdict(dict)
        for code, flags in last.items():
            loc = locs[code]
            loc["first_reach_ms"] = first[code]
            for suffix, ms in flags.items():
                loc["reached" + suffix] = 1
                loc["last_reach_ms" + suffix] = ms
                if code in self.villages:  # only administrative villages count in the village figures
                    for r in regions_of(code):
                        regions[r]["villages_reached" + suffix] += 1
                    for r in (code[:9], code[:6]):
                        indexes[r + suffix][code] = ms
        for r, ms in as_of.items():
            regions[r]["as_of_ms"] = ms
        return {
            "regions": {r: dict(c) for r, c in regions.items()},
            "locations": {c: dict(v) for c, v in locs.items()},
            "lapse_indexes": dict(indexes),
            "stats": {"events_applied": len(self.distinct), "events_duplicate": self.duplicates},
        }


# -- the read model ---------------------------------------------------------------------------------------

REGION_FIELDS = ("type:", "carrier:", "model:", "vol:", "villages_reached", "as_of_ms")
LOC_FIELDS = ("type:", "carrier:", "model:", "vol:", "reached", "first_reach_ms", "last_reach_ms")


async def read_model(redis: aioredis.Redis, prefix: str) -> dict[str, Any]:
    """The figures as stored, in the shape of :meth:`Expected.figures` (population tiers and zeros left out)."""

    def keep(fields: dict[Any, Any], wanted: tuple[str, ...]) -> dict[str, int]:
        return {
            f: int(v)
            for f, v in fields.items()
            if f.startswith(wanted) and names.field.TIER_SEP not in f and int(v) != 0
        }

    out: dict[str, Any] = {"regions": {}, "locations": {}, "lapse_indexes": {}}

    def code(key: str, suffix: str) -> str:
        return key.split(":" + suffix, 1)[1]

    for part, suffix in (("regions", names.REGION), ("locations", names.LOCATION)):
        async for key in redis.scan_iter(match=names.pattern(prefix, suffix), count=1000):
            kept = keep(await redis.hgetall(key), REGION_FIELDS if part == "regions" else LOC_FIELDS)
            if kept:
                out[part][code(key, suffix)] = kept
    async for key in redis.scan_iter(match=names.pattern(prefix, names.REACH_INDEX), count=1000):
        if names.field.TIER_SEP in key:
            continue
        members: list[Any] = await redis.zrange(key, 0, -1, withscores=True)
        if members:
            out["lapse_indexes"][code(key, names.REACH_INDEX)] = {m: int(s) for m, s in members}
    nation = keep(await stored.nation(redis, prefix), REGION_FIELDS)  # the provinces' summed, as the API reads it
    if nation:
        out["regions"][names.NATIONAL] = nation
    raw = await stored.stats(redis, prefix)
    out["stats"] = {k: int(raw.get(k, 0)) for k in ("events_applied", "events_duplicate")}
    return out


def differences(expected: dict[str, Any], actual: dict[str, Any], limit: int = 25) -> list[str]:
    """Readable differences between two figure trees, at most ``limit``."""
    out: list[str] = []

    def walk(path: str, e: Any, a: Any) -> None:
        if len(out) >= limit:
            return
        if isinstance(e, dict) and isinstance(a, dict):
            for k in sorted(set(e) | set(a)):
                walk(f"{path}/{k}", e.get(k), a.get(k))
        elif e != a:
            out.append(f"{path}: expected {e!r}, stored {a!r}")

    walk("", expected, actual)
    return out


async def stats(redis: aioredis.Redis, prefix: str) -> dict[str, int]:
    return await stored.stats(redis, prefix)


async def folded(redis: aioredis.Redis, prefix: str) -> int:
    """Events the apply script has taken so far, applied or dropped as repeats."""
    s = await stats(redis, prefix)
    return s.get(names.stat.EVENTS_APPLIED, 0) + s.get(names.stat.EVENTS_DUPLICATE, 0)


# -- waiting ----------------------------------------------------------------------------------------------


async def until(
    check: Callable[[], Awaitable[T]],
    *,
    within: float,
    what: str,
    every: float = 0.1,
    context: Callable[[], str] = lambda: "",
) -> T:
    """Poll ``check`` until it returns something true; fail after ``within`` seconds saying ``what``.

    Errors while polling (Redis restarting) count as not yet."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            result = await check()
        except (OSError, aioredis.RedisError) as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within:.0f}s: {what} (last: {last!r})\n{context()}")
        await asyncio.sleep(every)


async def connected_publisher(settings: Settings) -> Publisher:
    publisher = Publisher(settings)
    publisher.start()
    await until(lambda: _true(publisher.connected), within=30, what="the publisher connects to the broker")
    return publisher


async def _true(value: bool) -> bool:
    return value


async def end_offsets(settings: Settings) -> dict[str, int]:
    """The last offset of every partition of the scan topic, as the offsets hash names them (empty ones left out)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = consumer.partitions_for_topic(settings.scan_topic) or set()
        tps = [TopicPartition(settings.scan_topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {names.offset_field(tp.topic, tp.partition): end - 1 for tp, end in ends.items() if end > 0}


async def stored_offsets(redis: aioredis.Redis, prefix: str) -> dict[str, int]:
    return await stored.lowest_offsets(redis, prefix)


async def wait_caught_up(
    redis: aioredis.Redis, settings: Settings, expected: Expected, *, within: float, context: Callable[[], str]
) -> None:
    """Until the offsets stored with the effects reach the end of every partition: everything sent was folded
    (the apply script stores a record's offset in the same call as its effects), and nothing more will be."""
    ends = await end_offsets(settings)
    assert sum(1 for _ in ends) > 0

    async def done() -> bool:
        return await stored_offsets(redis, settings.redis_key_prefix) == ends

    await until(
        done,
        within=within,
        what=f"every partition folded to its end {ends}",
        every=0.2,
        context=lambda: f"sent {expected.sent}, distinct {len(expected.distinct)}\n{context()}",
    )


async def assert_exact(redis: aioredis.Redis, prefix: str, expected: Expected, seed: int, context: str = "") -> None:
    want = expected.figures()
    got = await read_model(redis, prefix)
    diff = differences(want, got)
    assert not diff, (
        f"FAULT_SEED={seed}: the read model differs from the test's own count:\n" + "\n".join(diff) + f"\n{context}"
    )
    # The test means something only with repeats and reached villages in it.
    assert expected.duplicates > 0 and want["regions"][names.NATIONAL].get("villages_reached", 0) > 0


# -- a stream of events with repeats ----------------------------------------------------------------------


@dataclass
class Stream:
    """Posts requests through the ingest Publisher until stopped: new events, with earlier ones re-sent (the
    same event_id in another request, hence another record, and possibly another partition's record), and
    now and then a whole earlier request again (a carrier's retry)."""

    publisher: Publisher
    maker: EventMaker
    expected: Expected
    rng: random.Random
    batch: int = 40
    pause: float = 0.03
    requests: int = 0
    history: list[list[dict[str, Any]]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def request(self) -> list[dict[str, Any]]:
        rng = self.rng
        if self.history and rng.random() < 0.1:
            return list(rng.choice(self.history))  # the carrier retries a whole request
        events = self.maker.events(self.batch)
        sent = list(self.expected.distinct.values())
        if sent:
            taken = {(e["carrier"], e["event_id"]) for e in events}
            for e in rng.sample(sent, min(len(sent), rng.randrange(0, self.batch // 4 + 1))):
                if (e["carrier"], e["event_id"]) not in taken:  # never twice in one request: the contract
                    taken.add((e["carrier"], e["event_id"]))
                    events.append(e)
        rng.shuffle(events)
        return events

    async def send(self, events: list[dict[str, Any]]) -> None:
        by_carrier: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in events:
            by_carrier[e["carrier"]].append(e)
        for carrier, mine in by_carrier.items():
            self.requests += 1
            await self.publisher.publish(carrier, f"req-{self.maker.tag}-{self.requests}", [to_scan(e) for e in mine])
            self.expected.add(mine)  # acknowledged by the broker (acks=all): counted
        self.history.append(events)

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.send(self.request())
            await asyncio.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()

    async def finish(self, running: asyncio.Task[None]) -> None:
        """Stop, let ``running`` (the task of :meth:`run`) end, and close the publisher. Whether the stream
        failed is for the test to assert afterwards (``running.exception()``)."""
        self.stop()
        with contextlib.suppress(Exception):
            await running
        await self.publisher.stop()
