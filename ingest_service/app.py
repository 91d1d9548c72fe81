"""The ingest HTTP API: `POST /v1/scans` and the health endpoints."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from starlette.requests import ClientDisconnect

from ingest_service import server
from ingest_service.auth import CarrierTokens
from ingest_service.backpressure import Backpressure
from ingest_service.publisher import BrokerUnavailable, Publisher
from lastmile import (
    apidocs,
    backlog,
    correction,
    corrections,
    divisions,
    logs,
    names,
    problem,
    redis_client,
    registry_index,
    scan,
)
from lastmile.broker import Broker
from lastmile.problem import Problem
from lastmile.settings import Settings
from lastmile.topics import ensure_topics

log = logging.getLogger("lastmile.ingest")


# The bearer token of a carrier; declared for the document only (auto_error off): the handler checks it.
CARRIER_TOKEN = HTTPBearer(
    auto_error=False,
    scheme_name="carrierToken",
    description="A carrier's token (LASTMILE_INGEST_CARRIER_TOKENS); the events must name that carrier.",
)


RESULT_SCHEMA = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer"},
        "request_id": {"type": "string"},
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "event_id": {"type": ["string", "null"]},
                    "errors": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lastmile_ingest_requests", "POST /v1/scans by status", ["status"], registry=self.registry
        )
        self.events = Counter(
            "lastmile_ingest_events", "Events by carrier and outcome", ["carrier", "outcome"], registry=self.registry
        )
        self.publish_seconds = Histogram(
            "lastmile_ingest_publish_seconds", "Time for the broker to acknowledge a batch", registry=self.registry
        )
        self.request_seconds = Histogram(
            "lastmile_ingest_request_duration_seconds",
            "POST /v1/scans from its first byte to the answer, by status",
            ["status"],
            registry=self.registry,
        )
        self.batch_events = Histogram(
            "lastmile_ingest_batch_events",
            "Events in a POST /v1/scans body that could be read",
            buckets=(1, 10, 50, 100, 250, 500, 1000),
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.backlog = Gauge(
            "lastmile_ingest_backlog_records",
            "Records published but not yet applied to the read model (-1: not measured)",
            registry=self.registry,
        )
        self.backlog_bound = Gauge(
            "lastmile_ingest_backlog_bound_records",
            "Backlog past which posts are refused with 503 (0: never)",
            registry=self.registry,
        )
        self.refusing = Gauge(
            "lastmile_ingest_refusing_posts", "1 while posts are refused for the backlog", registry=self.registry
        )
        self.memory: backlog.Memory | None = None  # Redis's, as the backlog watch last read it
        self.registry.register(self)

    def collect(self) -> Iterable[Metric]:
        return backlog.memory_metrics(self.memory) if self.memory is not None else []

    def describe(self) -> Iterable[Metric]:
        return []

    def observe(self, pressure: Backpressure) -> None:
        self.backlog.set(-1 if pressure.records is None else pressure.records)
        self.backlog_bound.set(pressure.settings.ingest_max_backlog_records)
        self.refusing.set(1 if pressure.refusal else 0)
        self.memory = pressure.memory


def create_app(settings: Settings) -> FastAPI:
    tokens = CarrierTokens(settings.carrier_token_map())
    metrics = Metrics()
    retry_after = {"Retry-After": str(settings.ingest_retry_after_seconds)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = redis_client.connect(settings)
        # Each batch's lookup takes a connection per node: on a cluster (no waiting pool) batches wait their turn.
        app.state.kinds = redis_client.Bounded()(registry_index.kinds)
        app.state.publisher = Publisher(settings)
        app.state.broker = Broker(settings.kafka_bootstrap_servers)
        app.state.backpressure = Backpressure(settings, app.state.redis, app.state.broker)
        try:
            await ensure_topics(settings)
        except Exception as exc:  # the broker may come later; the publisher keeps trying
            log.warning("could not check the topics at start", extra={"error": logs.describe(exc)})
        app.state.publisher.start()
        app.state.backpressure.start()
        if not tokens:
            log.warning("no carrier tokens configured: every POST will be 401")
        yield
        await app.state.backpressure.stop()
        await app.state.broker.close()
        await app.state.publisher.stop()
        await app.state.redis.aclose()

    body_schema, components = scan.json_schema(settings.ingest_max_events)
    app = FastAPI(
        title="lastmile-coverage ingest API",
        version="1",
        summary="Carriers post last-mile scan events (scan event contract v1).",
        lifespan=lifespan,
        docs_url=None,  # served by lastmile.apidocs from vendored assets: no CDN
        redoc_url=None,
    )
    apidocs.install(app)
    problem.install(app)
    problem.document_validation_as_400(app)
    _document_components(app, components)

    @app.post(
        "/v1/scans",
        status_code=202,
        summary="Post a batch of 1-1000 scan events",
        description=(
            "Answers 202 once every accepted event is acknowledged by the broker. Valid events are accepted even "
            "when others in the batch are rejected. Retrying a batch is safe: a (carrier, event_id) already "
            "accepted is counted once."
        ),
        dependencies=[Depends(CARRIER_TOKEN)],
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
        },
        responses={
            202: {"description": "Accepted", "content": {"application/json": {"schema": RESULT_SCHEMA}}},
            **problem.openapi_responses(400, 401, 408, 413, 415, 422, 503),
        },
    )
    async def post_scans(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await _post_scans(request)
        except Problem as exc:
            metrics.requests.labels(str(exc.status)).inc()
            metrics.request_seconds.labels(str(exc.status)).observe(time.perf_counter() - started)
            raise
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.request_seconds.labels(str(response.status_code)).observe(time.perf_counter() - started)
        return response

    async def _post_scans(request: Request) -> Response:
        carrier = tokens.carrier_for(request.headers.get("authorization"))
        _require_json(request)
        refusal = request.app.state.backpressure.refusal
        if refusal is not None:
            raise Problem(503, refusal, type_="backlog", headers=retry_after)
        body = await _read_body(request, settings.ingest_max_body_bytes)
        now = datetime.now(UTC)
        rejected: list[dict[str, Any]] = []
        valid: list[tuple[int, scan.ScanEvent]] = []
        first_index: dict[str, int] = {}

        def accept(i: int, event: scan.ScanEvent) -> None:
            first = first_index.setdefault(event.event_id, i)
            if first != i:
                rejected.append(_rejection(i, event.event_id, [f"event_id: repeats the event at index {first}"]))
            else:
                valid.append((i, event))

        batch = scan.decode_batch(body)  # the whole batch in one pass when every event is well formed
        if batch is not None:
            events = batch.events
            total = _check_count(len(events), settings.ingest_max_events)
            for i, event in enumerate(events):
                errors = scan.rules(event, now=now, carrier=carrier)
                if errors:
                    rejected.append(_rejection(i, event.event_id, errors))
                else:
                    accept(i, event)
        else:  # else event by event, to say which are not and why
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise Problem(400, f"the body is not valid JSON: {exc}", type_="malformed-json") from None
            raw_events = _events_of(data, settings.ingest_max_events)
            total = len(raw_events)
            for i, raw in enumerate(raw_events):
                result = scan.validate(raw, now=now, carrier=carrier)
                if isinstance(result, list):
                    event_id = raw.get(scan.EVENT_ID) if isinstance(raw, dict) else None
                    rejected.append(_rejection(i, event_id if isinstance(event_id, str) else None, result))
                else:
                    accept(i, result)

        unknown = await _unknown_codes(request, {e.location_code for _, e in valid})
        accepted: list[scan.ScanEvent] = []
        for i, event in valid:
            if event.location_code in unknown:
                errors = [f"location_code: {event.location_code} {unknown[event.location_code]}"]
                rejected.append(_rejection(i, event.event_id, errors))
            else:
                accepted.append(event)
        rejected.sort(key=lambda r: r["index"])
        metrics.events.labels(carrier, "rejected").inc(len(rejected))
        metrics.batch_events.observe(total)
        if not accepted:
            raise Problem(
                422,
                f"none of the {total} events is valid",
                type_="no-valid-events",
                accepted=0,
                rejected=rejected,
            )

        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            await request.app.state.publisher.publish(carrier, request_id, accepted)
        except BrokerUnavailable as exc:
            log.warning("broker unavailable; answering 503", extra={"carrier": carrier, "error": str(exc)})
            raise Problem(
                503,
                "the broker cannot take writes now; retry the same batch later (it is safe)",
                type_="broker-unavailable",
                headers=retry_after,
            ) from None
        metrics.publish_seconds.observe(time.perf_counter() - started)
        metrics.events.labels(carrier, "accepted").inc(len(accepted))
        log.info(
            "accepted",
            extra={"carrier": carrier, "request_id": request_id, "accepted": len(accepted), "rejected": len(rejected)},
        )
        content = {"accepted": len(accepted), "rejected": rejected, "request_id": request_id}
        return Response(
            orjson.dumps(content), status_code=202, media_type="application/json", headers={"X-Request-ID": request_id}
        )

    corrections_schema, correction_components = correction.json_schema(settings.ingest_max_events)
    components.update(correction_components)

    @app.post(
        "/v1/scans/corrections",
        status_code=202,
        summary="Withdraw accepted events, optionally replacing them (1-1000 corrections)",
        description=(
            "Each correction repeats the event withdrawn as it was accepted, gives a reason and may carry a "
            "replacement (a new event, new event_id). Answers 202 once every accepted correction is acknowledged by "
            "the broker; the worker then takes the event out of every figure, or holds the correction until the "
            "event arrives, or rejects it with a reason: see GET /v1/scans/corrections and docs/corrections.md."
        ),
        dependencies=[Depends(CARRIER_TOKEN)],
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": corrections_schema}}},
        },
        responses={
            202: {"description": "Accepted", "content": {"application/json": {"schema": RESULT_SCHEMA}}},
            **problem.openapi_responses(400, 401, 413, 415, 422, 503),
        },
    )
    async def post_corrections(request: Request) -> Response:
        carrier = tokens.carrier_for(request.headers.get("authorization"))
        _require_json(request)
        refusal = request.app.state.backpressure.refusal
        if refusal is not None:
            raise Problem(503, refusal, type_="backlog", headers=retry_after)
        body = await _read_body(request, settings.ingest_max_body_bytes)
        now = datetime.now(UTC)
        rejected: list[dict[str, Any]] = []
        valid: list[tuple[int, correction.Correction]] = []
        batch = correction.decode_batch(body)
        if batch is not None:
            total = _check_count(len(batch.corrections), settings.ingest_max_events)
            for i, c in enumerate(batch.corrections):
                errors = correction.rules(c, now=now, carrier=carrier)
                if errors:
                    rejected.append(_rejection(i, c.event.event_id, errors))
                else:
                    valid.append((i, c))
        else:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise Problem(400, f"the body is not valid JSON: {exc}", type_="malformed-json") from None
            items = _items_of(data, correction.CORRECTIONS, settings.ingest_max_events)
            total = len(items)
            for i, raw in enumerate(items):
                result = correction.validate(raw, now=now, carrier=carrier)
                if isinstance(result, list):
                    event = raw.get(correction.EVENT) if isinstance(raw, dict) else None
                    event_id = event.get(scan.EVENT_ID) if isinstance(event, dict) else None
                    rejected.append(_rejection(i, event_id if isinstance(event_id, str) else None, result))
                else:
                    valid.append((i, result))
        codes = {c.event.location_code for _, c in valid} | {
            c.replacement.location_code for _, c in valid if c.replacement is not None
        }
        unknown = await _unknown_codes(request, codes)
        withdrawn = await _withdrawn_already(request, [c.event for _, c in valid])
        accepted: list[correction.Correction] = []
        first_index: dict[str, int] = {}
        for i, c in valid:
            errors = [
                f"{path}.location_code: {e.location_code} {unknown[e.location_code]}"
                for path, e in ((correction.EVENT, c.event), (correction.REPLACEMENT, c.replacement))
                if e is not None and e.location_code in unknown
            ]
            if c.event.event_id in withdrawn:
                errors.append(
                    f"event.event_id: {c.event.event_id} already has a withdrawal ({withdrawn[c.event.event_id]}; "
                    "GET /v1/scans/corrections says what became of it)"
                )
            first = first_index.setdefault(c.event.event_id, i)
            if first != i:
                errors.append(f"event.event_id: repeats the correction at index {first}")
            if errors:
                rejected.append(_rejection(i, c.event.event_id, errors))
            else:
                accepted.append(c)
        rejected.sort(key=lambda r: r["index"])
        if not accepted:
            raise Problem(
                422,
                f"none of the {total} corrections is valid",
                type_="no-valid-corrections",
                accepted=0,
                rejected=rejected,
            )
        request_id = uuid.uuid4().hex
        replacements = [c.replacement for c in accepted if c.replacement is not None]
        try:
            await request.app.state.publisher.publish_corrections(carrier, request_id, accepted, replacements)
        except BrokerUnavailable as exc:
            log.warning("broker unavailable; answering 503", extra={"carrier": carrier, "error": str(exc)})
            raise Problem(
                503,
                "the broker cannot take writes now; retry the same corrections later (it is safe)",
                type_="broker-unavailable",
                headers=retry_after,
            ) from None
        log.info(
            "corrections accepted",
            extra={"carrier": carrier, "request_id": request_id, "accepted": len(accepted), "rejected": len(rejected)},
        )
        content = {"accepted": len(accepted), "rejected": rejected, "request_id": request_id}
        return Response(
            orjson.dumps(content), status_code=202, media_type="application/json", headers={"X-Request-ID": request_id}
        )

    @app.get(
        "/v1/scans/corrections",
        summary="This carrier's corrections and what became of each",
        description="Newest first: withdrawn, pending (waiting for its event) or rejected, with the reason.",
        dependencies=[Depends(CARRIER_TOKEN)],
        responses=problem.openapi_responses(401, 503),
    )
    async def list_corrections(request: Request) -> dict[str, Any]:
        carrier = tokens.carrier_for(request.headers.get("authorization"))
        try:
            docs = await corrections.read(request.app.state.redis, settings.redis_key_prefix, carrier=carrier)
        except aioredis.RedisError as exc:
            log.warning("corrections unreadable; answering 503", extra={"error": logs.describe(exc)})
            raise Problem(503, "the corrections cannot be read now; retry later", type_="redis-unavailable") from None
        return {"carrier": carrier, "corrections": docs}

    async def _withdrawn_already(request: Request, events: list[scan.ScanEvent]) -> dict[str, str]:
        """The events whose withdrawal the read model holds already: event_id -> the withdrawal's position."""
        if not events:
            return {}
        prefix = settings.redis_key_prefix
        try:
            async with request.app.state.redis.pipeline(transaction=False) as pipe:
                for e in events:
                    pipe.hget(names.key(prefix, names.LEDGER, e.location_code), correction.withdrawn_field(e))
                held = await pipe.execute()
        except aioredis.RedisError as exc:
            log.warning("ledger lookup failed; answering 503", extra={"error": logs.describe(exc)})
            raise Problem(503, "the read model cannot be read now; retry later", type_="redis-unavailable") from None
        return {e.event_id: str(h).split("|", 1)[1] for e, h in zip(events, held, strict=True) if h is not None}

    async def _unknown_codes(request: Request, codes: set[str]) -> dict[str, str]:
        """The codes events may not be at, each with why: not in the registry, or removed by its current edition."""
        if not codes:
            return {}
        ordered = sorted(codes)
        prefix = settings.redis_key_prefix
        try:
            kinds = await request.app.state.kinds(request.app.state.redis, prefix, ordered)
            edition = None
            if divisions.KIND_REMOVED in kinds:
                edition = await request.app.state.redis.hget(names.key(prefix, names.REG_META), names.meta.EDITION)
        except aioredis.RedisError as exc:
            log.warning("registry lookup failed; answering 503", extra={"error": logs.describe(exc)})
            raise Problem(
                503,
                "the division registry cannot be read now; retry later",
                type_="registry-unavailable",
                headers=retry_after,
            ) from None
        removed = f"was removed from the division registry by its current edition ({edition or 'unnamed'})"
        return {
            code: "is not in the division registry" if kind is None else removed
            for code, kind in zip(ordered, kinds, strict=True)
            if kind is None or kind == divisions.KIND_REMOVED
        }

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The broker and Redis are reachable and the backlog is within its bound",
        responses=problem.openapi_responses(503),
    )
    async def readyz(request: Request) -> dict[str, Any]:
        pressure: Backpressure = request.app.state.backpressure
        checks = {
            "broker": await request.app.state.publisher.ready(),
            "redis": await _redis_ok(request),
            "backlog": pressure.refusal is None,
        }
        body: dict[str, Any] = {"checks": checks, "backlog_records": pressure.records}
        if pressure.memory is not None and pressure.memory.full:
            body["redis_memory"] = pressure.memory.describe()
        if not all(checks.values()):
            down = [f"{name} unreachable" for name in ("broker", "redis") if not checks[name]]
            down += [] if checks["backlog"] else [str(pressure.refusal)]
            detail = "not ready: " + "; ".join(down)
            raise Problem(503, detail, type_="not-ready", headers=retry_after, **body)
        return {"status": "ready", **body}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus(request: Request) -> Response:
        metrics.observe(request.app.state.backpressure)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _document_components(app: FastAPI, components: dict[str, Any]) -> None:
    """The scan event's schema (lastmile.scan) among the document's component schemas, where the body refers to it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _redis_ok(request: Request) -> bool:
    try:
        return bool(await request.app.state.redis.ping())
    except (aioredis.RedisError, OSError):
        return False


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(
            413, f"the body is {declared} bytes; the limit is {limit}", type_="body-too-large", limit_bytes=limit
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Problem(
                    413, f"the body is over the limit of {limit} bytes", type_="body-too-large", limit_bytes=limit
                )
            chunks.append(chunk)
    except ClientDisconnect:  # the client left, or took longer than the server's read timeout: nothing to publish
        raise Problem(400, "the connection closed before the body arrived whole", type_="incomplete-body") from None
    return b"".join(chunks)


def _require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise Problem(
            415, f"send Content-Type: application/json, not {media_type or 'nothing'!r}", type_="unsupported-media-type"
        )


def _items_of(data: Any, name: str, max_items: int) -> list[Any]:
    if not isinstance(data, dict):
        raise Problem(400, f'the body must be a JSON object {{"{name}": [...]}}', type_="invalid-body")
    extra = sorted(set(data) - {name})
    if extra:
        raise Problem(400, f"unknown top-level field(s): {', '.join(extra)}", type_="invalid-body")
    items = data.get(name)
    if not isinstance(items, list):
        raise Problem(400, f"'{name}' must be an array", type_="invalid-body")
    if not items:
        raise Problem(400, f"'{name}' is empty; send 1 to {max_items}", type_="invalid-body")
    _check_count(len(items), max_items)
    return items


def _events_of(data: Any, max_events: int) -> list[Any]:
    if not isinstance(data, dict):
        raise Problem(400, 'the body must be a JSON object {"events": [...]}', type_="invalid-body")
    extra = sorted(set(data) - {"events"})
    if extra:
        raise Problem(400, f"unknown top-level field(s): {', '.join(extra)}", type_="invalid-body")
    events = data.get("events")
    if not isinstance(events, list):
        raise Problem(400, "'events' must be an array of scan events", type_="invalid-body")
    if not events:
        raise Problem(400, "'events' is empty; send 1 to 1000 events", type_="invalid-body")
    _check_count(len(events), max_events)
    return events


def _check_count(count: int, max_events: int) -> int:
    if count > max_events:
        raise Problem(
            413,
            f"{count} events in one request; the limit is {max_events}",
            type_="too-many-events",
            limit_events=max_events,
        )
    return count


def _rejection(index: int, event_id: str | None, errors: list[str]) -> dict[str, Any]:
    return {"index": index, "event_id": event_id, "errors": errors}


def serve(settings: Settings) -> None:
    logs.configure("ingest", settings.log_level, settings.log_format)
    log.info("starting", extra=settings.describe())
    config = server.config(
        create_app(settings),
        host=settings.ingest_host,
        port=settings.ingest_port,
        read_timeout=settings.ingest_request_read_timeout_seconds,
    )
    uvicorn.Server(config).run()
