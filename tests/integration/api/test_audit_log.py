"""The audit log of regulator reads: one line per /v1 request naming the token (never the token itself), its region,
the request and the answer, on by default; the fast path's answers and the routes' alike."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from lastmile.settings import Settings
from tests.support.regulator_world import (
    CHENGQU,
    DONGGUAN,
    NATIONAL_TOKEN,
    YUXIAN,
    YUXIAN_TOKEN,
    app_for,
    bearer,
    event,
    loaded_world,
    serving,
)

pytestmark = pytest.mark.integration


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    keys = ("token", "region", "method", "path", "query", "status")
    return [{k: getattr(r, k) for k in keys} for r in caplog.records if r.name == "lastmile.audit"]


async def test_every_read_is_logged_with_the_token_s_name_and_region_never_the_token(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await loaded_world(redis, settings, tmp_path, event(DONGGUAN))
    caplog.set_level(logging.INFO, logger="lastmile.audit")
    async with serving(app_for(settings), token=None) as client:
        county = bearer(YUXIAN_TOKEN)
        assert (await client.get(f"/v1/coverage/{YUXIAN}", headers=county)).status_code == 200  # the fast path
        assert (await client.get(f"/v1/coverage/{CHENGQU}", headers=county)).status_code == 403
        laggards = await client.get(f"/v1/laggards/{YUXIAN}", params={"level": "township"}, headers=county)
        assert laggards.status_code == 200  # a route
        assert (await client.get("/v1/coverage")).status_code == 401
        assert (await client.get("/healthz")).status_code == 200  # not a read: not logged
    logged = lines(caplog)
    assert [(line["path"], line["status"], line["region"]) for line in logged] == [
        (f"/v1/coverage/{YUXIAN}", 200, YUXIAN),
        (f"/v1/coverage/{CHENGQU}", 403, YUXIAN),
        (f"/v1/laggards/{YUXIAN}", 200, YUXIAN),
        ("/v1/coverage", 401, None),
    ]
    assert logged[2]["query"] == "level=township"
    names = {line["token"] for line in logged[:3]}
    assert len(names) == 1 and None not in names
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert YUXIAN_TOKEN not in text and NATIONAL_TOKEN not in text


async def test_the_audit_log_can_be_turned_off(
    redis: aioredis.Redis, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await loaded_world(redis, settings, tmp_path)
    caplog.set_level(logging.INFO, logger="lastmile.audit")
    async with serving(app_for(settings, coverage_audit_log=False)) as client:
        assert (await client.get(f"/v1/coverage/{YUXIAN}")).status_code == 200
    assert lines(caplog) == []
