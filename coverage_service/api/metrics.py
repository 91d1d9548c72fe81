"""The coverage API's Prometheus metrics: its requests, and the pipeline's progress read from the read model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from coverage_service.readmodel import queries
from lastmile import backlog, logs
from lastmile.broker import Broker
from lastmile.names import stat

log = logging.getLogger("lastmile.coverage")
T = TypeVar("T")


class HttpMetrics:
    """Requests and their latency by method, route template and status (the labelled children kept)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "lastmile_coverage_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "lastmile_coverage_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)


class Scraped:
    """Collector yielding the families computed by the latest ``/metrics`` request."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return self.families

    def describe(self) -> Iterable[Metric]:
        return []


_STAT_HELP: Final = {
    stat.EVENTS_APPLIED: "Scan events folded into the read model",
    stat.EVENTS_DUPLICATE: "Scan events dropped as repeats of a (carrier, event_id)",
    stat.EVENTS_UNKNOWN_LOCATION: "Scan events at a code not in the registry",
    stat.RECORDS_APPLIED: "Kafka records applied",
    stat.RECORDS_REPLAYED: "Kafka records skipped as already applied (replays)",
    stat.VILLAGES_NEWLY_REACHED: "Units reached for the first time",
    stat.DEAD_LETTERS: "Records sent to the dead-letter topic",
    stat.EVENTS_WITHDRAWN: "Scan events carriers withdrew, taken out of the figures (docs/corrections.md)",
}


async def scrape(redis: aioredis.Redis, prefix: str, broker: Broker, topic: str, stale: bool) -> list[Metric]:
    """The pipeline's metrics, read now; ``stale`` is the freshness watcher's verdict, as the documents carry it."""
    (progress, redis_err), (ends, broker_err), (memory, _) = await asyncio.gather(
        _attempt(queries.progress(redis, prefix)), _attempt(broker.end_offsets(topic)), _attempt(backlog.memory(redis))
    )
    up = GaugeMetricFamily("lastmile_coverage_dependency_up", "1 if the last scrape reached it", labels=["dependency"])
    up.add_metric(["redis"], 0 if redis_err else 1)
    up.add_metric(["broker"], 0 if broker_err else 1)
    out: list[Metric] = [up]
    if memory is not None:
        out += backlog.memory_metrics(memory)
    if progress is None:
        return out
    if ends is not None:
        lag = GaugeMetricFamily(
            "lastmile_consumer_lag_records",
            "Records on the topic not yet applied to the read model",
            labels=["topic", "partition"],
        )
        for part, behind in sorted(backlog.lag(topic, ends, progress["offsets"]).items()):
            lag.add_metric([topic, str(part)], behind)
        out.append(lag)
    as_of_ms, applied_ms = progress["national_as_of_ms"], progress["stats"].get(stat.APPLIED_AT_MS)
    help_ = "1 when records have waited LASTMILE_COVERAGE_STALE_AFTER_SECONDS with no batch applied (documents: stale)"
    out.append(GaugeMetricFamily("lastmile_read_model_stale", help_, value=int(stale)))
    # Times, not ages: an alert takes time() - the timestamp, and a scrape that stops shows as stale.
    if as_of_ms is not None:
        help_ = "The newest event time applied, national as_of (Unix time)"
        out.append(GaugeMetricFamily("lastmile_newest_event_timestamp_seconds", help_, value=as_of_ms / 1000))
    if applied_ms is not None:
        help_ = "When a worker last applied a batch (Unix time)"
        out.append(GaugeMetricFamily("lastmile_last_applied_timestamp_seconds", help_, value=applied_ms / 1000))
    for name, help_ in _STAT_HELP.items():
        out.append(CounterMetricFamily(f"lastmile_{name}", help_, value=progress["stats"].get(name, 0)))
    return out


async def _attempt(aw: Awaitable[T]) -> tuple[T | None, Exception | None]:
    try:
        return await aw, None
    except Exception as exc:
        log.warning("metrics scrape: %s", logs.describe(exc))
        return None, exc
