"""Coverage figures: the nation, a region with its children, one village."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from coverage_service import views
from coverage_service.access import Regulator, ensure_in_scope, regulator
from coverage_service.representation import respond
from coverage_service.routing import (
    CODE_DOC,
    VILLAGE_DOC,
    now_ms,
    redis_of,
    region_code,
    settings_of,
    unknown,
    village_code,
)
from lastmile import names, problem

router = APIRouter(tags=["coverage"])
Caller = Annotated[Regulator, Depends(regulator)]
_ERRORS = problem.openapi_responses(400, 401, 403, 404, 429, 503)


async def _coverage(request: Request, who: Regulator, code: str) -> Response:
    ensure_in_scope(who, code)
    settings = settings_of(request)
    body = await views.region_figures(
        redis_of(request), settings.redis_key_prefix, code, now_ms=now_ms(), lapse_ms=settings.lapse_window_ms
    )
    if body is None:
        raise unknown(code)
    return respond(request, body)


@router.get("/v1/coverage", response_model=views.Coverage, responses=_ERRORS)
async def national_coverage(request: Request, who: Caller) -> Response:
    """Coverage of the whole country, with each province."""
    return await _coverage(request, who, names.NATIONAL)


@router.get("/v1/coverage/{code}", response_model=views.Coverage, responses=_ERRORS)
async def region_coverage(
    request: Request, who: Caller, code: str = Path(description=CODE_DOC, examples=["14", "140322100"])
) -> Response:
    """Coverage of one region with its children one level down (for a township, its administrative villages)."""
    return await _coverage(request, who, region_code(code))


@router.get("/v1/villages/{code}", response_model=views.Village, responses=_ERRORS)
async def village(
    request: Request, who: Caller, code: str = Path(description=VILLAGE_DOC, examples=["140322100201"])
) -> Response:
    """One village-level unit: whether and when it was reached, and its parcel counts."""
    ensure_in_scope(who, village_code(code))
    body = await views.village_detail(redis_of(request), settings_of(request).redis_key_prefix, code)
    if body is None:
        raise unknown(code)
    return respond(request, body)
