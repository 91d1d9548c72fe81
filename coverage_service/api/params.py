"""What every coverage route takes: code validation, the filter parameters, the app's clients and settings,
the clock."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Final

import redis.asyncio as aioredis
from fastapi import Depends, Query, Request

from coverage_service.readmodel import queries
from coverage_service.readmodel.filters import Filter
from lastmile import divisions, names, scan
from lastmile.problem import Problem
from lastmile.settings import Settings

if TYPE_CHECKING:
    from coverage_service.api.documents import Documents

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


def documents_of(request: Request) -> Documents:
    found: Documents = request.app.state.documents
    return found


def reader_of(request: Request) -> queries.Reader:
    return documents_of(request).reader


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


# -- the filter every coverage figure takes -----------------------------------------------------------------

_CARRIER_RE = r"^[a-z0-9_-]{2,32}$"


async def filter_params(
    request: Request,
    carrier: Annotated[
        str | None, Query(description="Only villages this carrier reached (its own figures)", pattern=_CARRIER_RE)
    ] = None,
    cooperation_model: Annotated[
        str | None,
        Query(
            description="Only villages reached under this cooperation model",
            json_schema_extra={"enum": list(scan.COOPERATION_MODELS)},
        ),
    ] = None,
    min_population: Annotated[
        int | None, Query(description="Only villages of at least this population (a configured tier, e.g. 2500)", ge=1)
    ] = None,
) -> Filter:
    if carrier is not None and cooperation_model is not None:
        raise Problem(400, "filter by carrier or by cooperation_model, not both", type_="invalid-filter")
    if cooperation_model is not None and cooperation_model not in scan.COOPERATION_MODELS:
        raise Problem(
            400,
            f"cooperation_model {cooperation_model!r} is not one of {', '.join(scan.COOPERATION_MODELS)}",
            type_="invalid-filter",
        )
    if min_population is not None:
        tiers = await queries.population_tiers(redis_of(request), settings_of(request).redis_key_prefix)
        if min_population not in tiers:
            offered = ", ".join(map(str, tiers)) or "none (the registry has no population tiers)"
            raise Problem(
                400,
                f"min_population={min_population} is not a kept tier; available: {offered} "
                "(LASTMILE_PRIORITY_POPULATION_TIERS, then reload the registry)",
                type_="invalid-filter",
            )
    return Filter(carrier=carrier, cooperation_model=cooperation_model, min_population=min_population)


FilterParams = Annotated[Filter, Depends(filter_params)]
