"""What every coverage route shares: code validation, the app's clients and settings, the clock."""

from __future__ import annotations

import time
from typing import Final

import redis.asyncio as aioredis
from fastapi import Request

from lastmile import divisions, names
from lastmile.problem import Problem
from lastmile.settings import Settings

RETRY_AFTER_S: Final = "5"
CODE_DOC: Final = "Division code: 2 (province), 4 (city), 6 (county) or 9 (township) ASCII digits."
VILLAGE_DOC: Final = "12-digit village-level division code."
# The codes' forms, declared in the OpenAPI documents. The routes check them themselves (region_code,
# village_code) so that a wrong code gets a problem naming the right endpoint, not a generic pattern error.
REGION_PATTERN: Final = r"^(CN|[0-9]{2}|[0-9]{4}|[0-9]{6}|[0-9]{9})$"
VILLAGE_PATTERN: Final = r"^[0-9]{12}$"
COUNTY_PATTERN: Final = r"^[0-9]{6}$"


def documented_pattern(pattern: str) -> dict[str, str]:
    """``json_schema_extra`` stating a path parameter's pattern in the document only."""
    return {"pattern": pattern}


def redis_of(request: Request) -> aioredis.Redis:
    client: aioredis.Redis = request.app.state.redis
    return client


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def now_ms() -> int:
    return int(time.time() * 1000)


def region_code(code: str) -> str:
    """A 2/4/6/9-digit code, or a 400 problem; ``CN`` is the nation's code in the read model."""
    if code == names.NATIONAL or divisions.is_region_code(code):
        return code
    raise invalid(code, "a 2, 4, 6 or 9-digit division code")


def village_code(code: str) -> str:
    if divisions.is_village_code(code):
        return code
    raise invalid(code, "a 12-digit village code")


def invalid(code: str, expected: str) -> Problem:
    hint = ""
    if divisions.is_village_code(code):
        hint = f"; for a village use /v1/villages/{code}"
    elif divisions.is_region_code(code):
        hint = f"; for a region use /v1/coverage/{code}"
    return Problem(400, f"{code!r} is not {expected}{hint}", type_="invalid-code")


def unknown(code: str) -> Problem:
    return Problem(404, f"{code} is not in the division registry", type_="unknown-code")
