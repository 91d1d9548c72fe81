"""The regulator-facing coverage HTTP API: figures per region and village, health and metrics.

Reads only the Redis read model (see :mod:`coverage_service.views`); Kafka is used for readiness and
for the consumer lag on ``/metrics``. Clients are created in the lifespan, never at import.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
import uvicorn
from aiohttp import web as aio_web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI, Request, Response
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coverage_service import access, aioserve, documents, fastpath, pathguard, representation, resp, views
from coverage_service.routes import figures, reports, stream
from coverage_service.routing import RETRY_AFTER_S
from lastmile import logs, names, problem
from lastmile.names import stat
from lastmile.settings import Settings, SettingsError

log = logging.getLogger("lastmile.coverage")
T = TypeVar("T")

CHECK_TIMEOUT_S: Final = 2.0


class Broker:
    """Kafka as the API sees it: reachable or not, and a topic's end offsets. Connects lazily, and
    again after a failed connect, so the API starts and serves figures while the broker is down."""

    def __init__(self, bootstrap_servers: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self._servers = bootstrap_servers
        self._timeout = timeout_s
        self._lock = asyncio.Lock()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        async with self._lock:
            if self._admin is None or self._consumer is None:
                ms = int(self._timeout * 1000)
                admin = AIOKafkaAdminClient(bootstrap_servers=self._servers, request_timeout_ms=ms)
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self._servers, enable_auto_commit=False, request_timeout_ms=ms
                )
                try:
                    await asyncio.wait_for(admin.start(), self._timeout)  # one at a time: one error when down
                    await asyncio.wait_for(consumer.start(), self._timeout)
                except BaseException:
                    await asyncio.gather(admin.close(), consumer.stop(), return_exceptions=True)
                    raise
                self._admin, self._consumer = admin, consumer
            return self._admin, self._consumer

    async def ping(self) -> None:
        admin, _ = await self._clients()
        await asyncio.wait_for(admin.describe_cluster(), self._timeout)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Partition -> offset of the next record; empty when the topic does not exist."""
        admin, consumer = await self._clients()
        # All topics: naming the topic would let a broker with auto-creation create it.
        described = await asyncio.wait_for(admin.describe_topics(None), self._timeout)
        parts = [
            TopicPartition(topic, p["partition"]) for t in described if t["topic"] == topic for p in t["partitions"]
        ]
        if not parts:
            return {}
        ends = await asyncio.wait_for(consumer.end_offsets(parts), self._timeout)
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        if admin is not None and consumer is not None:
            await asyncio.gather(admin.close(), consumer.stop(), return_exceptions=True)


async def _check(probe: Awaitable[Any]) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
    except Exception as exc:
        return f"unreachable ({_describe(exc)})"
    return "ok"


def _describe(exc: Exception) -> str:
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


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


class _RequestMetrics:
    """ASGI middleware counting requests and their latency by route template and status."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.record(scope["method"], route, status, time.perf_counter() - start)


class _Scraped:
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
}


async def _scrape(redis: aioredis.Redis, prefix: str, broker: Broker, topic: str) -> list[Metric]:
    (progress, redis_err), (ends, broker_err) = await asyncio.gather(
        _attempt(views.progress(redis, prefix)), _attempt(broker.end_offsets(topic))
    )
    up = GaugeMetricFamily("lastmile_coverage_dependency_up", "1 if the last scrape reached it", labels=["dependency"])
    up.add_metric(["redis"], 0 if redis_err else 1)
    up.add_metric(["broker"], 0 if broker_err else 1)
    out: list[Metric] = [up]
    if progress is None:
        return out
    now_s = time.time()
    if ends is not None:
        lag = GaugeMetricFamily(
            "lastmile_consumer_lag",
            "Records on the topic not yet applied to the read model",
            labels=["topic", "partition"],
        )
        for part, end in sorted(ends.items()):
            applied = progress["offsets"].get(names.offset_field(topic, part), -1)
            lag.add_metric([topic, str(part)], max(0, end - (applied + 1)))
        out.append(lag)
    as_of_ms, applied_ms = progress["national_as_of_ms"], progress["stats"].get(stat.APPLIED_AT_MS)
    if as_of_ms is not None:
        help_ = "Seconds since the newest event time applied (national as_of)"
        out.append(GaugeMetricFamily("lastmile_newest_event_age_seconds", help_, value=now_s - as_of_ms / 1000))
    if applied_ms is not None:
        help_ = "Seconds since the worker last applied a batch"
        out.append(GaugeMetricFamily("lastmile_last_applied_age_seconds", help_, value=now_s - applied_ms / 1000))
    for name, help_ in _STAT_HELP.items():
        out.append(CounterMetricFamily(f"lastmile_{name}", help_, value=progress["stats"].get(name, 0)))
    return out


async def _attempt(aw: Awaitable[T]) -> tuple[T | None, Exception | None]:
    try:
        return await aw, None
    except Exception as exc:
        log.warning("metrics scrape: %s", _describe(exc))
        return None, exc


REDIS_POOL_SIZE: Final = 64


def create_app(settings: Settings) -> FastAPI:
    prefix, topic = settings.redis_key_prefix, settings.scan_topic
    max_age_s = settings.coverage_figures_max_age_seconds
    if not math.isfinite(max_age_s) or max_age_s < 0:
        raise SettingsError("COVERAGE_FIGURES_MAX_AGE_SECONDS: must be 0 (no cache) or a positive number of seconds")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=2)
        # A blocking pool: under many concurrent clients, requests wait for a connection instead of
        # failing with "Too many connections" (which the default pool raises past max_connections).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_connect_timeout=CHECK_TIMEOUT_S,
            retry=retry,
            max_connections=REDIS_POOL_SIZE,
            timeout=CHECK_TIMEOUT_S,
        )
        app.state.redis = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        # The hot documents are read through a pipelining client of their own when the URL allows (resp.py).
        # The county counts of the larger regions are read on a connection of their own: Redis takes turns
        # between connections, so those calls do not queue behind the documents' (nor these behind them).
        fast = bulk = None
        if resp.supports(settings.redis_url):
            fast, bulk = resp.RespClient.from_url(settings.redis_url), resp.RespClient.from_url(settings.redis_url)
        app.state.documents = documents.Documents(
            app.state.redis, prefix, lapse_ms=settings.lapse_window_ms, max_age_s=max_age_s, fast=fast, bulk=bulk
        )
        app.state.fast_path = fastpath.FastPath(
            app.state.access, app.state.documents, settings.coverage_cache_max_age_seconds
        )
        app.state.broker = Broker(settings.kafka_bootstrap_servers)
        try:
            await app.state.broker.ping()
        except Exception as exc:
            log.warning("broker not reachable at start (%s); will retry on demand", _describe(exc))
        if not len(app.state.access):
            log.warning("no regulator tokens (COVERAGE_REGULATOR_TOKENS): every coverage request will be 401")
        try:
            yield
        finally:
            stream.stop(app)
            await app.state.documents.close()
            for client in (fast, bulk):
                if client is not None:
                    await client.close()
            await app.state.broker.close()
            await app.state.redis.aclose()

    app = FastAPI(
        title="lastmile coverage",
        version="1",
        summary="Express-into-villages (快递进村) coverage figures, live from carriers' last-mile scans.",
        lifespan=lifespan,
        # No 307 to the path without its trailing slash: it would answer before authentication, with a
        # Location built from the client's Host header. Such a path is a 404 problem like any unknown one.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.access = access.Access.from_settings(settings)  # SettingsError for unusable tokens
    app.state.streams = stream.Streams.from_settings(settings)
    problem.install(app)
    problem.document_validation_as_400(app)

    async def on_redis_down(_: Request, exc: Exception) -> Response:
        log.warning("read model unavailable: %s", exc)
        detail = "the read model (Redis) is unavailable"
        return problem.response(503, detail, type_="unavailable", headers={"Retry-After": RETRY_AFTER_S})

    app.add_exception_handler(RedisConnectionError, on_redis_down)
    app.add_exception_handler(RedisTimeoutError, on_redis_down)

    registry = CollectorRegistry()
    app.state.http_metrics = HttpMetrics(registry)
    scraped = _Scraped()
    registry.register(scraped)
    for router in (figures.router, stream.router, reports.router):
        app.include_router(router)
    app.add_middleware(representation.HeadAsGet)  # inside the metrics: they count HEAD as HEAD
    routes = {route.path: route for route in representation.api_routes(app.routes)}
    app.add_middleware(fastpath.FastPathMiddleware, routes=routes)  # the hot GETs, before FastAPI's routing
    app.add_middleware(pathguard.PathGuard)  # before routing, tokens and Redis
    app.add_middleware(_RequestMetrics, metrics=app.state.http_metrics)
    app.state.registry = registry

    @app.get("/healthz", responses=problem.openapi_responses(500))
    async def healthz() -> dict[str, str]:
        """The process is up (no I/O)."""
        return {"status": "ok"}

    @app.get("/readyz", responses=problem.openapi_responses(500, 503))
    async def readyz() -> dict[str, Any]:
        """Redis answers PING and the Kafka broker answers a metadata request; 503 names what is down."""
        results = await asyncio.gather(_check(app.state.redis.ping()), _check(app.state.broker.ping()))
        checks = dict(zip(("redis", "broker"), results, strict=True))
        down = [name for name, result in checks.items() if result != "ok"]
        if down:
            detail = "not ready: " + "; ".join(f"{name} {checks[name]}" for name in down)
            raise problem.Problem(503, detail, type_="not-ready", headers={"Retry-After": RETRY_AFTER_S}, checks=checks)
        return {"status": "ready", "checks": checks}

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **problem.openapi_responses(500)},
    )
    async def metrics() -> Response:
        """Prometheus metrics; consumer lag, event ages and worker counters are computed per scrape."""
        families = await _scrape(app.state.redis, prefix, app.state.broker, topic)
        scraped.families = families  # no await between this and rendering: scrapes cannot interleave
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    for route in representation.api_routes(app.routes):  # protected routes list 401/403/429; GETs 304, 406, CSV
        if access.protects(route):
            access.document(route)
            representation.document(route)
    return app


SERVERS: Final = ("aiohttp", "uvicorn")


class Server(uvicorn.Server):
    """uvicorn, ending the live streams first when it shuts down: it waits for open responses to finish."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        config = uvicorn.Config(app, host=settings.coverage_host, port=settings.coverage_port, log_config=None,
                                access_log=settings.coverage_access_log)  # fmt: skip
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stream.stop(self.app)
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    """Run the API on COVERAGE_HOST:COVERAGE_PORT until interrupted: on aiohttp's server with the fast path in
    front (coverage_service.aioserve), or on uvicorn (COVERAGE_SERVER=uvicorn)."""
    logs.configure("coverage", settings.log_level, settings.log_format)
    try:
        if settings.coverage_server not in SERVERS:
            raise SettingsError(f"COVERAGE_SERVER: {settings.coverage_server!r} is not one of {', '.join(SERVERS)}")
        app = create_app(settings)
    except SettingsError as exc:
        print(f"lastmile coverage: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.coverage_server == "uvicorn":
        Server(app, settings).run()
        return
    aioserve.AioServer(
        app,
        settings.coverage_host,
        settings.coverage_port,
        on_shutdown=lambda: stream.stop(app),
        access_log=settings.coverage_access_log,
        front=server_front(app),
    ).run()


def server_front(app: FastAPI) -> aioserve.Front:
    """The fast path (coverage_service.fastpath) as the aiohttp server's first look at each request: the hot
    requests are answered before they become ASGI requests; the others go on, marked as seen."""
    metrics: HttpMetrics = app.state.http_metrics
    declined: dict[str, Any] = {fastpath.DECLINED: True}
    wanted = [(name, name.decode()) for name in fastpath.WANTED]

    async def front(
        request: aio_web.BaseRequest, raw: str, query: str
    ) -> aio_web.StreamResponse | dict[str, Any] | None:
        method = request.method
        if query or method not in ("GET", "HEAD") or "%" in raw:
            return None
        found = fastpath.target(raw)
        fast = fastpath.fast_path_of(app)
        if found is None or fast is None:
            return None
        started = time.perf_counter()
        asked = request.headers
        headers = {name: value for name, text in wanted if (value := asked.get(text)) is not None}
        try:
            answer = await fast.answer(method, *found, headers)
        except Exception:  # a bug, not a failure of Redis (answer hands those on): the app answers, with a problem
            log.exception("the fast path failed on %s %s", method, raw)
            return declined
        if isinstance(answer, fastpath.Answer):  # counted like the app's requests (to the answer, not its write)
            response = aio_web.Response(
                status=answer.status,
                body=answer.body,
                headers=CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers),
            )
            metrics.record(method, answer.route, answer.status, time.perf_counter() - started)
            return response
        return declined if answer is None else {**declined, access.AUTHENTICATED: answer}

    return front
