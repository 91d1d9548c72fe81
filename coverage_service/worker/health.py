"""The worker's own HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics`` (Prometheus), served with aiohttp beside
the stream. Faust's web server stays off: its pages expose tables and routing. Ready means partitions assigned and
folding: no records waiting, or a batch applied within ``LASTMILE_WORKER_READY_STALL_SECONDS`` (docs/operations.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from lastmile import backlog, logs, problem
from lastmile.settings import Settings

log = logging.getLogger("lastmile.worker.health")


@dataclass(frozen=True, slots=True)
class State:
    """What readiness and the metrics are decided from, read when asked."""

    assigned: int  # partitions of the scan topic assigned to this worker
    behind: Mapping[int, int]  # per assigned partition, records on the topic not yet applied (None: not known yet)
    last_applied_s: float | None  # when this worker last applied a batch (time.time())
    totals: Mapping[str, int]  # the folder's counters since start


def readiness(state: State, stall_s: float, now_s: float, waiting_since_s: float | None = None) -> tuple[bool, str]:
    """Ready, and why not: no partitions, or records waiting and nothing applied for ``stall_s`` seconds, counted from
    the later of the last batch applied and ``waiting_since_s`` (when records were first seen waiting), so a record
    arriving after a quiet hour is not taken for a stall."""
    if state.assigned == 0:
        return False, "no partitions of the scan topic are assigned to this worker"
    waiting = sum(state.behind.values())
    if waiting == 0:
        return True, "caught up"
    if not backlog.stalled(waiting, state.last_applied_s, waiting_since_s, now_s, stall_s):
        return True, f"folding: {waiting:,} records to apply"
    since = None if state.last_applied_s is None else now_s - state.last_applied_s
    ago = "nothing applied since the start" if since is None else f"the last batch was applied {since:.0f} s ago"
    return (
        False,
        f"not folding: {waiting:,} records to apply and {ago} (LASTMILE_WORKER_READY_STALL_SECONDS={stall_s:g})",
    )


class Health:
    """The endpoint; ``state`` is read on each request."""

    def __init__(self, settings: Settings, state: Callable[[], State]) -> None:
        self.settings = settings
        self.state = state
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.fold_seconds = Histogram(
            "lastmile_worker_fold_duration_seconds",
            "Time to fold a batch taken from the topic: decode, decide and apply, retries included",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.registry.register(_Collector(self))
        self._runner: web.AppRunner | None = None
        self._waiting = backlog.WaitingSince()

    def ready(self, state: State, now_s: float) -> tuple[bool, str]:
        """:func:`readiness`, with the moment records were first seen waiting remembered between requests."""
        since = self._waiting.seen(sum(state.behind.values()), now_s)
        return readiness(state, self.settings.worker_ready_stall_seconds, now_s, since)

    async def start(self) -> None:
        if not self.settings.worker_http_port:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = self.settings.worker_http_host, self.settings.worker_http_port
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            # Folding matters more than the endpoint: the worker goes on, and says why probes will fail.
            log.error("health endpoint not served", extra={"host": host, "port": port, "error": logs.describe(exc)})
            await runner.cleanup()
            return
        self._runner = runner
        log.info("health endpoint", extra={"url": f"http://{host}:{port}/readyz"})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        state = self.state()
        ready, why = self.ready(state, time.time())
        body: dict[str, Any] = {
            "partitions_assigned": state.assigned,
            "records_behind": sum(state.behind.values()),
            "last_applied_s_ago": None
            if state.last_applied_s is None
            else round(time.time() - state.last_applied_s, 1),
        }
        if ready:
            return web.json_response({"status": "ready", "detail": why, **body})
        doc = problem.document(503, f"not ready: {why}", type_="not-ready", **body)
        return web.Response(status=503, body=orjson.dumps(doc), content_type=problem.MEDIA_TYPE)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Collector:
    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> list[Metric]:
        state = self.health.state()
        ready, _ = self.health.ready(state, time.time())
        out: list[Metric] = []
        up = GaugeMetricFamily("lastmile_worker_ready", "1 while the worker is ready (/readyz)")
        up.add_metric([], int(ready))
        out.append(up)
        assigned = GaugeMetricFamily("lastmile_worker_partitions_assigned", "Scan topic partitions this worker holds")
        assigned.add_metric([], state.assigned)
        out.append(assigned)
        behind = GaugeMetricFamily(
            "lastmile_worker_partition_lag_records", "Records on the partition not yet applied", labels=["partition"]
        )
        for partition, n in sorted(state.behind.items()):
            behind.add_metric([str(partition)], n)
        out.append(behind)
        if state.last_applied_s is not None:
            last = GaugeMetricFamily(
                "lastmile_worker_last_apply_timestamp_seconds", "When this worker last applied a batch (Unix time)"
            )
            last.add_metric([], state.last_applied_s)
            out.append(last)
        for name, value in sorted(state.totals.items()):
            out.append(CounterMetricFamily(f"lastmile_worker_{name}", f"This worker's {name} since it started", value))
        return out

    def describe(self) -> list[Metric]:
        return []
