"""The coverage API app: its clients (made in the lifespan, never at import), routes, middleware and health.

Reads only the Redis read model (:mod:`coverage_service.readmodel.queries`); Kafka is used for readiness and for
the consumer lag on ``/metrics``. Served by :mod:`coverage_service.api.server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coverage_service.api import access, dashboard, documents, fastpath, freshness, metrics, middleware, representation
from coverage_service.api.params import RETRY_AFTER_S
from coverage_service.api.routes import caller, corrections, figures, reports, stream
from coverage_service.readmodel import queries, resp
from coverage_service.readmodel.registry_store import registry_loaded
from lastmile import apidocs, backlog, logs, problem, redis_client
from lastmile.broker import CHECK_TIMEOUT_S, Broker
from lastmile.settings import Settings

log = logging.getLogger("lastmile.coverage")


async def _check(probe: Awaitable[Any]) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
    except Exception as exc:
        return f"unreachable ({logs.describe(exc)})"
    return "ok"


def _redis(settings: Settings) -> aioredis.Redis:
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=2)
    return redis_client.connect(settings, socket_connect_timeout=CHECK_TIMEOUT_S, retry=retry)


def create_app(settings: Settings) -> FastAPI:
    prefix, topic = settings.redis_key_prefix, settings.scan_topic
    max_age_s = settings.coverage_figures_max_age_seconds

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = _redis(settings)
        # The hot documents are read through a pipelining client of their own when the URL allows (resp.py;
        # one server, not a cluster).
        fast = None
        if resp.supports(settings.redis_url) and not settings.redis_cluster:
            fast = resp.RespClient.from_url(settings.redis_url)
        reader = queries.Reader.on(app.state.redis, prefix, fast=fast)
        app.state.broker = Broker(settings.kafka_bootstrap_servers)
        watcher = freshness.Watcher(
            app.state.redis, prefix, app.state.broker, topic, settings.coverage_stale_after_seconds
        )
        app.state.freshness = watcher
        app.state.documents = documents.Documents(
            reader, lapse_days=settings.lapse_window_days, max_age_s=max_age_s, stale=lambda: watcher.stale
        )
        app.state.fast_path = fastpath.FastPath(
            app.state.access, app.state.documents, settings.coverage_cache_max_age_seconds
        )
        try:
            await app.state.broker.ping()
        except Exception as exc:
            log.warning("broker not reachable at start (%s); will retry on demand", logs.describe(exc))
        if not len(app.state.access):
            log.warning("no regulator tokens (LASTMILE_COVERAGE_REGULATOR_TOKENS): every coverage request will be 401")
        watcher.start()
        try:
            yield
        finally:
            await watcher.stop()
            stream.stop(app)
            await app.state.streams.channels.close()
            await app.state.documents.close()
            if fast is not None:
                await fast.close()
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
        docs_url=None,  # served by lastmile.apidocs from vendored assets: no CDN
        redoc_url=None,
    )
    apidocs.install(app)
    dashboard.install(app)
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
    ProcessCollector(registry=registry)  # a registry of its own has no process_* metrics unless asked
    app.state.http_metrics = metrics.HttpMetrics(registry)
    scraped = metrics.Scraped()
    registry.register(scraped)
    for router in (figures.router, stream.router, reports.router, caller.router, corrections.router):
        app.include_router(router)
    app.add_middleware(middleware.HeadAsGet)  # inside the metrics: they count HEAD as HEAD
    routes = {route.path: route for route in representation.api_routes(app.routes)}
    app.add_middleware(fastpath.FastPathMiddleware, routes=routes)  # the hot GETs, before FastAPI's routing
    app.add_middleware(middleware.PathGuard)  # before routing, tokens and Redis
    app.add_middleware(middleware.RequestMetrics, metrics=app.state.http_metrics)
    if settings.coverage_audit_log:
        app.add_middleware(middleware.AuditLog)
    app.state.registry = registry

    @app.get("/healthz", responses=problem.openapi_responses(500))
    async def healthz() -> dict[str, str]:
        """The process is up (no I/O)."""
        return {"status": "ok"}

    async def whole() -> None:
        if not await registry_loaded(app.state.redis, prefix):
            raise RuntimeError("no whole registry is loaded (lastmile registry load)")

    @app.get("/readyz", responses=problem.openapi_responses(500, 503))
    async def readyz() -> dict[str, Any]:
        """Redis answers and the read model is whole (a registry loaded): the API reads nothing else. The broker is
        reported (``checks.broker``), not required: regulators keep their figures through a broker outage."""
        results = await asyncio.gather(_check(app.state.redis.ping()), _check(whole()), _check(app.state.broker.ping()))
        checks = dict(zip(("redis", "read_model", "broker"), results, strict=True))
        down = [name for name in ("redis", "read_model") if checks[name] != "ok"]
        if down:
            detail = "not ready: " + "; ".join(f"{name} {checks[name]}" for name in down)
            raise problem.Problem(503, detail, type_="not-ready", headers={"Retry-After": RETRY_AFTER_S}, checks=checks)
        body: dict[str, Any] = {"status": "ready", "checks": checks}
        with contextlib.suppress(Exception):  # reported, not required: the figures can still be read
            memory = await backlog.memory(app.state.redis)
            if memory.full:
                body["redis_memory"] = memory.describe()
        return body

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **problem.openapi_responses(500)},
    )
    async def prometheus() -> Response:
        """Prometheus metrics; consumer lag, event ages and worker counters are computed per scrape."""
        families = await metrics.scrape(app.state.redis, prefix, app.state.broker, topic, app.state.freshness.stale)
        scraped.families = families  # no await between this and rendering: scrapes cannot interleave
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    for route in representation.api_routes(app.routes):  # protected routes list 401/403/429; GETs 304, 406, CSV
        if access.protects(route):
            access.document(route)
            representation.document(route)
    return app
