"""`lastmile soak`: a steady load for minutes on end while the stack is hurt on purpose, then an exact count.

It shows that the figures stay exact, and the services recover, through worker, broker, Redis and coverage API
faults over a longer run than the fault tests. What it does and reports is on docs/performance.md ("The soak").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlparse

import httpx
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from lastmile import backlog, names
from lastmile.registry import BUNDLED, Registry, read_registry
from lastmile.settings import Settings
from lastmile_dev import devstack
from lastmile_dev.bench import posting
from lastmile_dev.bench.exact import check_exact, counters, wait_applied
from lastmile_dev.bench.generator import Generator
from lastmile_dev.bench.stack import BenchStack, settings_env, wait_for_members
from lastmile_dev.devstack import Proc, StackError

# events/s: well under what one worker sustains on a laptop. The issue asks for half the sustained throughput, but
# that figure belongs to the machine (`make bench` measures it), so the default is a fixed, conservative one.
DEFAULT_RATE: Final = 2_500
DEFAULT_MINUTES: Final = 30.0
DEFAULT_FAULT_EVERY_MINUTES: Final = 4.0
FAULTS: Final = ("worker", "broker", "redis", "coverage")
SAMPLE_SECONDS: Final = 10.0
BROKER_PAUSE_SECONDS: Final = 10.0
BATCH_MAX: Final = 500  # events per POST (one carrier's batch)
BATCHES_PER_SECOND: Final = 5  # smaller batches at low rates, so the load stays steady
IN_FLIGHT: Final = 64  # most posts outstanding; beyond that the poster falls behind and catches up later
RETRY_PAUSE_SECONDS: Final = 0.5
RECOVERY_TIMEOUT_SECONDS: Final = 300.0
DRAIN_STALL_SECONDS: Final = 180.0
SAMPLE_REGISTRY: Final = BUNDLED["sample"]
SEED: Final = 20261122


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = DEFAULT_MINUTES
    rate: float = DEFAULT_RATE
    fault_every_minutes: float = DEFAULT_FAULT_EVERY_MINUTES
    registry_dir: Path = SAMPLE_REGISTRY
    out_dir: Path = Path("bench-results")
    seed: int = SEED
    sample_seconds: float = SAMPLE_SECONDS

    @property
    def batch_size(self) -> int:
        return max(1, min(BATCH_MAX, round(self.rate / BATCHES_PER_SECOND)))

    @property
    def broker_pause_seconds(self) -> float:
        return min(BROKER_PAUSE_SECONDS, self.fault_every_minutes * 60 / 2)


@dataclass
class Fault:
    kind: str
    at_seconds: float  # since the posting started
    down_seconds: float = 0.0  # how long the service was out (killed until restarted, stopped until continued)
    back_seconds: float | None = None  # from injection until the service serves again
    recovered_seconds: float | None = None  # ... and everything accepted before the fault is applied
    note: str = ""


@dataclass
class Sample:
    t: float  # seconds since the posting started
    accepted: int  # events answered 202 (re-sends included)
    applied: int | None  # distinct events in Redis (None: Redis did not answer)
    duplicates: int | None  # events the worker dropped as repeats
    used_memory: int | None
    worker_rss: int | None
    lag_records: int | None  # records in the topic the worker has not applied
    lag_events: int | None  # distinct events accepted but not yet applied


@dataclass
class SoakResult:
    config: dict[str, Any]
    started_at: str
    finished_at: str = ""
    posting_seconds: float = 0.0
    events_distinct: int = 0  # the generator's own count
    events_accepted: int = 0  # 202'd, re-sends included
    resends_generated: int = 0  # the generator's deliberate duplicates
    requests: int = 0
    retries: int = 0  # 503s and broken connections, each followed by the same batch again
    applied: int = 0
    duplicates_dropped: int = 0
    drain_seconds: float | None = None
    exact: bool = False
    figures_checked: int = 0
    mismatches: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)  # unplanned exits, restarted
    errors: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    workdir: str = ""
    path: str = ""

    @property
    def ok(self) -> bool:
        return self.exact and not self.errors and all(f.recovered_seconds is not None for f in self.faults)


class SoakPoster:
    """Posts single-carrier batches and never gives up on one: 503 and transport errors are retried."""

    def __init__(self, url: str, tokens: dict[str, str], http: httpx.AsyncClient) -> None:
        self.url = f"{url}/v1/scans"
        self.headers = {
            c: {"Authorization": f"Bearer {t}", "Content-Type": "application/json"} for c, t in tokens.items()
        }
        self.http = http
        self.accepted = 0
        self.acked_distinct = 0  # fresh events of the batches answered 202 (what must end up applied)
        self.requests = 0
        self.retries = 0
        self.errors: list[str] = []
        self.last_ok = 0.0  # monotonic time of the last 202

    async def post(self, batch: list[dict[str, Any]], fresh: int) -> None:
        body = orjson.dumps({"events": batch})
        headers = self.headers[batch[0]["carrier"]]
        while True:
            try:
                response = await self.http.post(self.url, content=body, headers=headers)
            except httpx.TransportError:
                self.retries += 1
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
                continue
            self.requests += 1
            if response.status_code == 202:
                result = response.json()
                if result["rejected"]:
                    self.errors.append(f"ingest rejected generated events: {str(result['rejected'][:2])[:300]}")
                self.accepted += int(result["accepted"])
                self.acked_distinct += fresh
                self.last_ok = time.monotonic()
                return
            if response.status_code in (502, 503, 504):
                self.retries += 1
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
                continue
            self.errors.append(f"POST /v1/scans answered {response.status_code}: {response.text[:300]}")
            return


class Soak:
    def __init__(self, config: SoakConfig, *, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        self.registry: Registry | None = None
        self.generator: Generator | None = None
        run_id = f"soak-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:4]}"
        self.run_id = run_id
        self.bench: BenchStack | None = None
        self.result = SoakResult(
            config={
                **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                "batch_size": config.batch_size,
                "broker_pause_seconds": config.broker_pause_seconds,
            },
            started_at=datetime.now(UTC).isoformat(),
        )
        self.t0 = 0.0
        self.in_fault: str | None = None  # the supervisor leaves the faulted service to the fault
        self.poster: SoakPoster | None = None

    # -- the stack ----------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        assert self.bench is not None
        return self.bench.settings

    def redis_client(self) -> aioredis.Redis:
        return aioredis.from_url(self.settings.redis_url, decode_responses=True, socket_timeout=5)

    async def start(self) -> None:
        from coverage_service.readmodel.registry_store import load_registry
        from lastmile.topics import ensure_topics

        self.registry = await asyncio.to_thread(read_registry, self.config.registry_dir)
        self.generator = Generator(self.registry, self.config.seed)
        self.bench = BenchStack(self.config.out_dir / self.run_id, list(self.generator.carriers))
        # Always the embedded broker and a redis-server of its own, whatever the environment names: the faults
        # stop and restart them.
        self.bench.kafka = self.bench.redis = None
        self.result.workdir = str(self.bench.workdir)
        await asyncio.to_thread(self.bench.start_infra, self.run_id.removeprefix("soak-"))
        await ensure_topics(self.settings)
        self.say(f"soak: loading the registry {self.config.registry_dir} …")
        client = self.redis_client()
        try:
            await load_registry(
                client, self.settings.redis_key_prefix, self.registry, population_tiers=self.settings.population_tiers
            )
        finally:
            await client.aclose()
        await self.bench.start_services()

    def proc(self, name: str) -> Proc:
        assert self.bench is not None
        if name == "worker":
            assert self.bench.main_worker is not None
            return self.bench.main_worker
        if name in self.bench.services:
            return self.bench.services[name]
        return next(p for p in self.bench.infra if p.name == name)

    def restart(self, name: str) -> Proc:
        """Start ``name`` again (after it was killed or died), with the same settings, port and log."""
        bench = self.bench
        assert bench is not None
        old = self.proc(name)
        old.kill()
        old.stop()
        if name == "worker":
            bench.workers = [w for w in bench.workers if w is not old]
            new = bench.main_worker = bench.start_worker()
        elif name in ("ingest", "coverage"):
            new = Proc(name, devstack.lastmile_command(name), old.log_path, env=settings_env(self.settings)).start()
            bench.services[name] = new
        elif name == "redis":
            port = urlparse(self.settings.redis_url).port
            # A restart loads the whole last save before it answers (seconds per GB), then the worker folds the rest.
            new, _ = devstack.start_redis(bench.workdir / "redis", port=port, ready_within=180)
            bench.infra = [new if p is old else p for p in bench.infra]
        else:
            raise ValueError(f"cannot restart {name}")
        return new

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart any service that died outside a fault, as `make run` and a restart policy would."""
        while not stop.is_set():
            for name in ("ingest", "coverage", "worker", "redis", "broker"):
                if name == self.in_fault:
                    continue
                try:
                    proc = self.proc(name)
                except (StopIteration, AssertionError):
                    continue
                if not proc.alive():
                    t = time.monotonic() - self.t0
                    self.result.crashes.append(f"{name} exited at {t:.0f} s (log {proc.log_path}): {proc.log_tail(3)}")
                    self.say(f"soak: {name} exited on its own at {t:.0f} s; restarting")
                    if name == "broker":
                        self.result.errors.append("the broker exited; its memory storage is gone")
                        stop.set()
                        return
                    await asyncio.to_thread(self.restart, name)
            await asyncio.sleep(1.0)

    # -- load ---------------------------------------------------------------------------------------

    async def load(self, poster: SoakPoster, until: float) -> None:
        gen = self.generator
        assert gen is not None
        size = self.config.batch_size
        interval = size / self.config.rate
        slots = asyncio.Semaphore(IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def one(batch: list[dict[str, Any]], fresh: int) -> None:
            try:
                await poster.post(batch, fresh)
            finally:
                slots.release()

        next_at = time.monotonic()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await slots.acquire()
            before = gen.events_distinct
            batch = gen.next_batch(size)
            task = asyncio.create_task(one(batch, gen.events_distinct - before))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
        if tasks:
            await asyncio.gather(*tasks)

    # -- measuring ----------------------------------------------------------------------------------

    async def stats(self, redis: aioredis.Redis) -> tuple[int, int]:
        wanted = [names.stat.EVENTS_APPLIED, names.stat.EVENTS_DUPLICATE]
        values = await counters(redis, self.settings.redis_key_prefix, wanted)
        return values[wanted[0]], values[wanted[1]]

    async def lag_records(self, consumer: AIOKafkaConsumer, redis: aioredis.Redis) -> int:
        topic = self.settings.scan_topic
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(partitions)
        stored = await backlog.applied_offsets(redis, self.settings.redis_key_prefix)
        lag = 0
        for tp in partitions:
            lag += ends[tp] - (stored.get(names.offset_field(topic, tp.partition), -1) + 1)
        return max(0, lag)

    async def sample(self, consumer: AIOKafkaConsumer, redis: aioredis.Redis) -> Sample:
        assert self.poster is not None
        applied: int | None = None
        duplicates: int | None = None
        used: int | None = None
        lag: int | None = None
        with contextlib.suppress(Exception):
            applied, duplicates = await asyncio.wait_for(self.stats(redis), 5)
            used = int((await asyncio.wait_for(redis.info("memory"), 5))["used_memory"])
        with contextlib.suppress(Exception):
            lag = await asyncio.wait_for(self.lag_records(consumer, redis), 5)
        return Sample(
            t=round(time.monotonic() - self.t0, 1),
            accepted=self.poster.accepted,
            applied=applied,
            duplicates=duplicates,
            used_memory=used,
            worker_rss=rss(self.proc("worker").pid) if self.proc("worker").alive() else None,
            lag_records=lag,
            lag_events=self.poster.acked_distinct - applied if applied is not None else None,
        )

    async def sampler(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers, request_timeout_ms=5_000)
        await consumer.start()
        redis = self.redis_client()
        try:
            await consumer.topics()  # metadata, for partitions_for_topic
            while not stop.is_set():
                s = await self.sample(consumer, redis)
                self.result.samples.append(s)
                self.say(
                    f"soak {s.t:6.0f} s: accepted {s.accepted:,} applied {num(s.applied)} dup {num(s.duplicates)} "
                    f"lag {s.lag_records} records; redis {mib(s.used_memory)}, worker {mib(s.worker_rss)}"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.sample_seconds)
        finally:
            await redis.aclose()
            await consumer.stop()

    # -- faults -------------------------------------------------------------------------------------

    async def faults(self, until: float) -> None:
        every = self.config.fault_every_minutes * 60
        n = 0
        while True:
            at = self.t0 + every * (n + 1)
            if at >= until:
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            kind = FAULTS[n % len(FAULTS)]
            n += 1
            fault = Fault(kind, round(time.monotonic() - self.t0, 1))
            self.result.faults.append(fault)
            self.say(f"soak: fault {n}: {kind} at {fault.at_seconds:.0f} s")
            try:
                await self.inject(fault)
            except Exception as exc:
                fault.note = f"{type(exc).__name__}: {exc}"[:300]
                self.result.errors.append(f"fault {kind} at {fault.at_seconds:.0f} s: {fault.note}")
            finally:
                self.in_fault = None
            self.say(
                f"soak: fault {n}: {kind} back after {fmt(fault.back_seconds)} s, recovered after "
                f"{fmt(fault.recovered_seconds)} s"
            )

    async def inject(self, fault: Fault) -> None:
        assert self.poster is not None
        poster = self.poster
        target = poster.acked_distinct  # everything accepted so far must get applied
        redis = self.redis_client()
        self.in_fault = fault.kind
        started = time.monotonic()
        try:
            if fault.kind == "worker":
                before, _ = await self.stats(redis)
                await asyncio.to_thread(self.proc("worker").kill)
                await asyncio.to_thread(self.restart, "worker")
                fault.down_seconds = time.monotonic() - started
                self.in_fault = None
                await wait_for_members(self.settings, self.settings.consumer_group, 1, [self.proc("worker")], 120)
                await until_true(lambda: self._applied_beyond(redis, before), RECOVERY_TIMEOUT_SECONDS)
            elif fault.kind == "broker":
                broker = self.proc("broker")
                broker.signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(self.config.broker_pause_seconds)
                finally:
                    broker.signal(signal.SIGCONT)
                fault.down_seconds = time.monotonic() - started
                continued = time.monotonic()
                await until_true(lambda: _true(poster.last_ok > continued), RECOVERY_TIMEOUT_SECONDS)
            elif fault.kind == "redis":
                await asyncio.to_thread(self.proc("redis").stop, 30.0)
                await asyncio.to_thread(self.restart, "redis")
                fault.down_seconds = time.monotonic() - started
                self.in_fault = None
                await until_true(lambda: _pong(redis), RECOVERY_TIMEOUT_SECONDS)
            elif fault.kind == "coverage":
                await asyncio.to_thread(self.proc("coverage").kill)
                await asyncio.to_thread(self.restart, "coverage")
                fault.down_seconds = time.monotonic() - started
                self.in_fault = None
                assert self.bench is not None
                url = self.bench.stack.coverage_url
                await until_true(lambda: _ready(url), RECOVERY_TIMEOUT_SECONDS)
            fault.back_seconds = round(time.monotonic() - started, 2)
            await until_true(lambda: self._applied_at_least(redis, target), RECOVERY_TIMEOUT_SECONDS)
            fault.recovered_seconds = round(time.monotonic() - started, 2)
            fault.down_seconds = round(fault.down_seconds, 2)
        finally:
            await redis.aclose()

    async def _applied_beyond(self, redis: aioredis.Redis, count: int) -> bool:
        return (await self.stats(redis))[0] > count

    async def _applied_at_least(self, redis: aioredis.Redis, count: int) -> bool:
        return (await self.stats(redis))[0] >= count

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> SoakResult:
        result = self.result
        try:
            await self.start()
            assert self.bench is not None and self.generator is not None and self.registry is not None
            gen = self.generator
            async with posting.client(IN_FLIGHT) as http:
                self.poster = poster = SoakPoster(self.bench.stack.ingest_url, self.bench.carrier_tokens, http)
                self.say(
                    f"soak: {self.config.minutes:g} min at {self.config.rate:,.0f} events/s "
                    f"(batches of {self.config.batch_size}), a fault every {self.config.fault_every_minutes:g} min"
                )
                self.t0 = time.monotonic()
                until = self.t0 + self.config.minutes * 60
                stop = asyncio.Event()
                sampler = asyncio.create_task(self.sampler(stop))
                supervisor = asyncio.create_task(self.supervise(stop))
                faults = asyncio.create_task(self.faults(until))
                try:
                    await self.load(poster, until)
                    result.posting_seconds = round(time.monotonic() - self.t0, 1)
                    await faults  # a fault still recovering finishes first
                    self.say(f"soak: posting done; draining {gen.events_distinct:,} distinct events")
                    drained_from = time.monotonic()
                    redis = self.redis_client()
                    try:
                        done_at, _ = await wait_applied(
                            redis,
                            self.settings.redis_key_prefix,
                            gen.events_distinct,
                            poll_seconds=0.2,
                            stall_seconds=DRAIN_STALL_SECONDS,
                        )
                        result.drain_seconds = round(done_at - drained_from, 1) if done_at is not None else None
                        await asyncio.sleep(1.0)  # anything applied twice would show now
                        exact = await check_exact(redis, self.settings.redis_key_prefix, self.registry, gen.expected())
                        result.applied, result.duplicates_dropped = await self.stats(redis)
                    finally:
                        await redis.aclose()
                    result.exact = exact.ok and done_at is not None
                    result.figures_checked = exact.checked
                    result.mismatches = exact.mismatches[:20]
                    if done_at is None:
                        result.errors.append("the backlog did not drain (no progress for 180 s)")
                finally:
                    stop.set()
                    faults.cancel()
                    for task in (sampler, supervisor, faults):
                        with contextlib.suppress(BaseException):
                            await task
                result.samples.append(await self._last_sample())
            result.events_distinct = gen.events_distinct
            result.resends_generated = int(gen.expected()["duplicates_sent"])
            result.events_accepted = poster.accepted
            result.requests = poster.requests
            result.retries = poster.retries
            result.errors.extend(poster.errors[:20])
        except Exception as exc:
            result.errors.append(f"harness: {type(exc).__name__}: {exc}"[:500])
        finally:
            if self.bench is not None:
                for p in self.bench.infra:
                    p.signal(signal.SIGCONT)
                await asyncio.to_thread(self.bench.close)
                # The workers' Faust data folder (named after the consumer group, in the working directory).
                shutil.rmtree(f"{self.settings.consumer_group}-data", ignore_errors=True)
            result.finished_at = datetime.now(UTC).isoformat()
            result.path = str(write(result, self.config.out_dir))
        return result

    async def _last_sample(self) -> Sample:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers, request_timeout_ms=5_000)
        await consumer.start()
        redis = self.redis_client()
        try:
            await consumer.topics()
            return await self.sample(consumer, redis)
        finally:
            await redis.aclose()
            await consumer.stop()


# -- helpers ----------------------------------------------------------------------------------------


async def until_true(check: Callable[[], Any], within: float, every: float = 0.2) -> None:
    """Wait until ``await check()`` is true (errors count as not yet); StackError after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception:
            pass
        await asyncio.sleep(every)
    raise StackError(f"not recovered within {within:.0f} s")


async def _true(value: bool) -> bool:
    return value


async def _pong(redis: aioredis.Redis) -> bool:
    return bool(await redis.ping())


async def _ready(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        return (await client.get(f"{url}/readyz")).status_code == 200


def rss(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes (Linux), None when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def write(result: SoakResult, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    payload = asdict(result)
    payload["ok"] = result.ok
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    return path


def table(result: SoakResult) -> str:
    """The summary as plain text (figures, faults, memory over time)."""
    lines = [
        f"soak {result.posting_seconds:,.0f} s of posting at {float(result.config['rate']):,.0f} events/s "
        f"({result.config['registry_dir']})",
        f"  events posted (202, re-sends included) {result.events_accepted:>14,}",
        f"  distinct events (generator's count)    {result.events_distinct:>14,}",
        f"  applied in Redis                       {result.applied:>14,}",
        f"  duplicates dropped by the worker       {result.duplicates_dropped:>14,}"
        f"   (generator re-sends {result.resends_generated:,}; the rest are retried posts)",
        f"  requests / retried after 503 or error  {result.requests:>14,} / {result.retries:,}",
        f"  backlog drained in                     {fmt(result.drain_seconds):>14} s",
        f"  exact ({result.figures_checked:,} figures)              {'yes' if result.exact else 'NO':>14}",
    ]
    lines += [f"    mismatch: {m}" for m in result.mismatches[:10]]
    lines.append("  faults:            at s   down s   back s   recovered s")
    for f in result.faults:
        lines.append(
            f"    {f.kind:<14} {f.at_seconds:>8.0f} {f.down_seconds:>8.1f} {fmt(f.back_seconds):>8} "
            f"{fmt(f.recovered_seconds):>13}  {f.note}"
        )
    lines.append("  over time:   t s     accepted      applied   dup   lag rec   redis mem    worker rss")
    samples = result.samples
    step = max(1, len(samples) // 20)
    for s in [*samples[::step], *([samples[-1]] if samples and (len(samples) - 1) % step else [])]:
        lines.append(
            f"    {s.t:>10.0f} {s.accepted:>12,} {num(s.applied):>12} {num(s.duplicates):>5} {num(s.lag_records):>9} "
            f"{mib(s.used_memory):>11} {mib(s.worker_rss):>13}"
        )
    lines += [f"  crash: {c}" for c in result.crashes]
    lines += [f"  error: {e}" for e in result.errors]
    lines.append(f"  results: {result.path}")
    return "\n".join(lines)


def run_soak(config: SoakConfig, *, say: Callable[[str], None] = print) -> SoakResult:
    return asyncio.run(Soak(config, say=say).run())


def main(config: SoakConfig) -> int:
    """The CLI's entry: 0 when the run completed, every fault recovered and the figures are exact."""
    import sys

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        result = run_soak(config, say=lambda text: print(text, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("interrupted; the stack is stopped")
        return 130
    print(table(result))
    return 0 if result.ok else 1
