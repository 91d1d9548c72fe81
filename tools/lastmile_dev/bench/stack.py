"""The stack a benchmark runs on: the same processes `make run` starts, with bench names and tokens.

Topics, consumer group and Redis key prefix are unique to the run, so a bench never mixes with other data on shared
servers; the coverage API's per-token rate limit is off, since the harness is the one client.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import httpx
from aiokafka.admin import AIOKafkaAdminClient

from lastmile.settings import PREFIX, Settings, lookup
from lastmile_dev import devstack
from lastmile_dev.bench.core import Stack
from lastmile_dev.devstack import Proc, StackError

READY_TIMEOUT_SECONDS: Final = 90.0


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a `lastmile` process needs to run with exactly ``settings``."""
    return {**(os.environ if base is None else base), **settings.to_env()}


def _secret_file(path: Path, data: dict[str, str]) -> Path:
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


async def group_members(settings: Settings, group: str, admin: AIOKafkaAdminClient | None = None) -> tuple[str, int]:
    """The consumer group's state and member count, as the broker reports them (("", 0) if unknown)."""
    if admin is None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=5_000)
        await admin.start()
        try:
            return await group_members(settings, group, admin)
        finally:
            await admin.close()
    for response in await admin.describe_consumer_groups([group]):
        for g in response.groups:
            if g[1] == group:
                return str(g[2]), len(g[5])
    return "", 0


async def wait_for_members(settings: Settings, group: str, count: int, procs: list[Proc], within: float) -> float:
    """Wait until ``group`` is Stable with ``count`` members; return the time (monotonic) it was seen so."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise StackError(f"{proc.name} exited while joining; log {proc.log_path}:\n{proc.log_tail()}")
        try:
            state, members = await group_members(settings, group)
        except Exception:  # the broker is busy or the group is new: ask again
            state, members = "", 0
        if state == "Stable" and members == count:
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise StackError(f"consumer group {group} did not reach {count} stable members in {within:.0f} s")


class BenchStack:
    """Starts and stops everything; :attr:`stack` is what scenarios see."""

    def __init__(self, workdir: Path, carriers: list[str], *, kafka: str | None = None, redis: str | None = None):
        self.workdir = workdir.resolve()
        self.logs = self.workdir / "logs"
        self.carriers = carriers
        self.kafka = kafka if kafka is not None else lookup(os.environ, "KAFKA_BOOTSTRAP_SERVERS")
        self.redis = redis if redis is not None else lookup(os.environ, "REDIS_URL")
        self.infra: list[Proc] = []
        self.services: dict[str, Proc] = {}
        self.workers: list[Proc] = []
        self.main_worker: Proc | None = None  # the stack's own; scenarios' extra workers come and go
        self._worker_seq = 0
        self.settings = Settings()
        self.carrier_tokens: dict[str, str] = {}
        self.regulator_token = ""
        self._stack: Stack | None = None

    @property
    def stack(self) -> Stack:
        assert self._stack is not None, "start_infra() first"
        return self._stack

    def start_infra(self, run_id: str) -> Settings:
        """Broker, Redis, settings and tokens; the services come later (after the registry is in)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        base = Settings.from_env()
        kafka, redis = self.kafka, self.redis
        if kafka is None:
            proc, kafka = devstack.start_broker(self.logs)
            self.infra.append(proc)
        if redis is None:
            proc, redis = devstack.start_redis(self.workdir / "redis")
            self.infra.append(proc)
        self.carrier_tokens = {c: secrets.token_urlsafe(24) for c in self.carriers}
        self.regulator_token = secrets.token_urlsafe(24)
        carrier_file = _secret_file(
            self.workdir / "carrier-tokens.json", {t: c for c, t in self.carrier_tokens.items()}
        )
        regulator_file = _secret_file(self.workdir / "regulator-tokens.json", {self.regulator_token: ""})
        self.settings = base.replace(
            kafka_bootstrap_servers=kafka,
            redis_url=redis,
            redis_key_prefix=f"bench-{run_id}",
            scan_topic=f"lastmile.bench-{run_id}.scans",
            dead_letter_topic=f"lastmile.bench-{run_id}.scans.deadletter",
            consumer_group=f"lastmile-bench-{run_id}",
            ingest_host="127.0.0.1",
            ingest_port=devstack.free_port(),
            coverage_host="127.0.0.1",
            coverage_port=devstack.free_port(),
            carrier_tokens="",
            carrier_tokens_file=str(carrier_file),
            regulator_tokens="",
            regulator_tokens_file=str(regulator_file),
            coverage_rate_limit_per_second=0.0,
            coverage_streams_per_token=10_000,  # the streams scenario holds a thousand on the one token
        )
        self._stack = Stack(
            settings=self.settings,
            ingest_url=f"http://127.0.0.1:{self.settings.ingest_port}",
            coverage_url=f"http://127.0.0.1:{self.settings.coverage_port}",
            carrier_tokens=self.carrier_tokens,
            regulator_token=self.regulator_token,
            workdir=self.workdir,
            start_worker=self.start_worker,
            stop_workers=self.stop_workers,
            process_groups=self.process_groups,
        )
        return self.settings

    async def start_services(self) -> None:
        """Ingest, coverage API and one worker; returns once both APIs are ready and the worker has joined."""
        env = settings_env(self.settings)
        for name in ("ingest", "coverage"):
            proc = Proc(name, devstack.lastmile_command(name), self.logs / f"{name}.log", env=env).start()
            self.services[name] = proc
        worker = self.main_worker = self.start_worker()
        # The coverage API is ready once a registry is in, which the registry_load scenario may load later: up is
        # enough here.
        await wait_ready(self.services["ingest"], self.stack.ingest_url)
        await wait_ready(self.services["coverage"], self.stack.coverage_url, "/healthz")
        await wait_for_members(self.settings, self.settings.consumer_group, 1, [worker], READY_TIMEOUT_SECONDS)

    def start_worker(self, settings: Settings | None = None) -> Proc:
        self._worker_seq += 1
        # Several workers on one host: each its own health endpoint port.
        env = {**settings_env(settings or self.settings), PREFIX + "WORKER_HTTP_PORT": str(devstack.free_port())}
        log = self.logs / f"worker-{self._worker_seq}.log"
        proc = Proc(f"worker-{self._worker_seq}", devstack.lastmile_command("worker"), log, env=env).start()
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            proc.stop()
        self.workers.clear()
        self.main_worker = None

    def process_groups(self) -> dict[str, list[int]]:
        """Role -> the process groups of this stack's live processes (Redis is measured by its own INFO cpu)."""
        groups: dict[str, list[int]] = {"worker": [p.pid for p in self.workers if p.alive()]}
        for name, proc in self.services.items():
            groups[name] = [proc.pid]
        for proc in self.infra:
            if proc.name == "broker":
                groups["broker"] = [proc.pid]
        return groups

    def processes(self) -> list[Proc]:
        """The processes that must stay up for the whole run."""
        main = [self.main_worker] if self.main_worker is not None else []
        return [*self.infra, *self.services.values(), *main]

    def close(self) -> None:
        self.stop_workers()
        for proc in self.services.values():
            proc.stop()
        self.services.clear()
        for proc in reversed(self.infra):
            proc.kill()  # a graceful stop would save gigabytes that nothing reads again
            proc.stop()
        if self.infra:
            # The run's saves are gigabytes, and of no use once the figures are out; the logs stay.
            (self.workdir / "redis" / "dump.rdb").unlink(missing_ok=True)
        self.infra.clear()


async def wait_ready(proc: Proc, url: str, path: str = "/readyz") -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise StackError(f"{proc.name} exited while starting; log {proc.log_path}:\n{proc.log_tail()}")
            try:
                if (await client.get(f"{url}{path}")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise StackError(f"{proc.name} not ready after {READY_TIMEOUT_SECONDS:.0f} s; log {proc.log_path}")
