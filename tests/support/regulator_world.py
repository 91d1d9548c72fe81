"""A tiny registry and scan events, loaded through the real loader and writer, for the regulator-side tests.

Two counties of 阳泉市 (山西省): 盂县 140322 with two townships and three administrative villages, and its
neighbour 城区 140302 with one. Every expected figure in the tests is counted by hand from this file.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from coverage_service import fold
from coverage_service.api.app import create_app
from coverage_service.readmodel.registry_store import load_registry
from coverage_service.readmodel.writer import ReadModelWriter
from lastmile import scan
from lastmile.registry import read_registry
from lastmile.settings import Settings

NATIONAL_TOKEN = "national-token-0123456789"
YUXIAN_TOKEN = "yuxian-bureau-token-0123456789"  # 盂县 140322
CHENGQU_TOKEN = "chengqu-bureau-token-0123456789"  # 城区 140302
CARRIER_TOKEN = "carrier-sf-token-0123456789"
TOKENS = {NATIONAL_TOKEN: "", YUXIAN_TOKEN: "140322", CHENGQU_TOKEN: "140302"}

YUXIAN, CHENGQU = "140322", "140302"
XIUSHUI, DONGLIANG, DONGJIE = "140322100", "140322205", "140302001"
DONGGUAN, XIGUAN, JIA, YIJING = "140322100201", "140322100202", "140322205201", "140302001201"
SHEQU = "140322100001"  # a residents' committee: never counted
VILLAGES = [
    (DONGGUAN, "东关村委会", XIUSHUI, YUXIAN),
    (XIGUAN, "西关村委会", XIUSHUI, YUXIAN),
    (SHEQU, "城关社区居委会", XIUSHUI, YUXIAN),
    (JIA, "甲村委会", DONGLIANG, YUXIAN),
    (YIJING, "义井村委会", DONGJIE, CHENGQU),
]

NOW = datetime.now(UTC)
_ids = itertools.count()


def write_registry(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "provinces": (["code", "name"], [["14", "山西省"]]),
        "cities": (["code", "name", "provinceCode"], [["1403", "阳泉市", "14"]]),
        "areas": (
            ["code", "name", "cityCode", "provinceCode"],
            [[YUXIAN, "盂县", "1403", "14"], [CHENGQU, "城区", "1403", "14"]],
        ),
        "streets": (
            ["code", "name", "areaCode", "provinceCode", "cityCode"],
            [
                [XIUSHUI, "秀水镇", YUXIAN, "14", "1403"],
                [DONGLIANG, "东梁乡", YUXIAN, "14", "1403"],
                [DONGJIE, "东街街道", CHENGQU, "14", "1403"],
            ],
        ),
        "villages": (
            ["code", "name", "streetCode", "provinceCode", "cityCode", "areaCode"],
            [[code, name, town, "14", "1403", county] for code, name, town, county in VILLAGES],
        ),
    }
    for stem, (header, rows) in tables.items():
        with open(folder / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
    return folder


def event(code: str, *, days_ago: float = 1, carrier: str = "sf", event_type: str = "delivered") -> fold.Entry:
    i = next(_ids)
    raw = {
        "event_id": f"rw{i}",
        "carrier": carrier,
        "waybill": f"RW{i:08d}",
        "event_type": event_type,
        "location_code": code,
        "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
    }
    parsed = scan.validate(raw, now=datetime.now(UTC))
    assert isinstance(parsed, scan.ScanEvent), parsed
    return fold.entry(parsed)


class World:
    """The registry loaded under the test's prefix, and a writer applying events as Kafka records would."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self.writer = ReadModelWriter(redis, settings.redis_key_prefix, 3600)
        self._offsets = itertools.count()

    async def load(self, folder: Path) -> None:
        await load_registry(
            self.redis, self.settings.redis_key_prefix, read_registry(write_registry(folder)), population_tiers=(2500,)
        )

    async def apply(self, *entries: fold.Entry) -> None:
        await self.writer.apply([fold.Record("t", 0, next(self._offsets), list(entries))])


async def loaded_world(redis: aioredis.Redis, settings: Settings, folder: Path, *entries: fold.Entry) -> World:
    """The world's registry loaded from ``folder``, then ``entries`` applied as one record."""
    world = World(redis, settings)
    await world.load(folder)
    if entries:
        await world.apply(*entries)
    return world


def request_counts(metrics_text: str, method: str = "GET") -> dict[tuple[str, str], float]:
    """The coverage service's request counter from a /metrics text: (route, status) -> requests."""
    return {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "lastmile_coverage_http_requests"
        for s in family.samples
        if s.name.endswith("_total") and s.labels["method"] == method
    }


def with_tokens(settings: Settings, **changes: Any) -> Settings:
    return settings.replace(
        regulator_tokens=json.dumps(TOKENS),
        carrier_tokens=json.dumps({CARRIER_TOKEN: "sf"}),
        **changes,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def serving(app: FastAPI, token: str | None = NATIONAL_TOKEN) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process (lifespan included); requests carry ``token`` unless they say otherwise."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://coverage.test",
            headers=bearer(token) if token else None,
        ) as client,
    ):
        yield client


def app_for(settings: Settings, **changes: Any) -> FastAPI:
    return create_app(with_tokens(settings, **changes))


def national_api(settings: Settings) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    """The app with one national regulator token and no rate limit, and a client that sends the token."""
    tokens = json.dumps({NATIONAL_TOKEN: ""})
    return serving(create_app(settings.replace(regulator_tokens=tokens, coverage_rate_limit_per_second=0.0)))
