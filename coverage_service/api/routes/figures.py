"""Coverage figures: the nation, a region with its children and breakdown, its unreached villages, one village."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from coverage_service.api.access import Regulator, ensure_in_scope, regulator
from coverage_service.api.documents import CoverageDocument, VillageDocument
from coverage_service.api.params import (
    CODE_DOC,
    REGION_PATTERN,
    VILLAGE_DOC,
    VILLAGE_PATTERN,
    FilterParams,
    documented_pattern,
    documents_of,
    now_ms,
    redis_of,
    region_code,
    settings_of,
    unknown,
    village_code,
)
from coverage_service.api.representation import Rendered, Table, respond, respond_rendered
from coverage_service.readmodel import unreached
from coverage_service.readmodel.filters import Filter
from lastmile import names, problem
from lastmile.problem import Problem

router = APIRouter(tags=["coverage"])
Caller = Annotated[Regulator, Depends(regulator)]
_ERRORS = problem.openapi_responses(400, 401, 403, 404, 429, 503)
CodePath = Annotated[
    str,
    Path(
        description=CODE_DOC,
        examples=["14", "140322", "140322100"],
        json_schema_extra=documented_pattern(REGION_PATTERN),
    ),
]
LIMIT_MAX: Final = 1000


async def _coverage(request: Request, who: Regulator, code: str, flt: Filter) -> Response:
    ensure_in_scope(who, code)  # before any figure, cached or not, is looked at
    rendered = await documents_of(request).region(code, flt)
    if rendered is None:
        raise unknown(code)
    return respond_rendered(request, rendered)


@router.get("/v1/coverage", response_model=CoverageDocument, responses=_ERRORS)
async def national_coverage(request: Request, who: Caller, flt: FilterParams) -> Response:
    """Coverage of the whole country, with each province, the definition in force and a breakdown by
    carrier, cooperation model and parcels. ``carrier``, ``cooperation_model`` and ``min_population``
    restrict every figure."""
    return await _coverage(request, who, names.NATIONAL, flt)


@router.get("/v1/coverage/{code}", response_model=CoverageDocument, responses=_ERRORS)
async def region_coverage(request: Request, who: Caller, code: CodePath, flt: FilterParams) -> Response:
    """Coverage of one region (``CN``: the nation, as ``/v1/coverage``) with its children one level down
    (for a township, its administrative villages), the definition in force and a breakdown by carrier,
    cooperation model and parcels. ``carrier``, ``cooperation_model`` and ``min_population`` restrict every
    figure, children's too."""
    return await _coverage(request, who, region_code(code), flt)


class UnreachedPage(unreached.Page):
    stale: bool  # as in coverage documents: records wait and none was applied lately


@router.get("/v1/coverage/{code}/unreached", response_model=UnreachedPage, responses=_ERRORS)
async def unreached_villages(
    request: Request,
    who: Caller,
    code: CodePath,
    flt: FilterParams,
    lapsed: Annotated[
        bool, Query(description="Also list lapsed villages: reached, but not within the lapse window")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX, description="Most villages in one page")] = 100,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page; omit for the first page")
    ] = None,
) -> Response:
    """The administrative villages of a region (in the scope) that are not reached, and with
    ``lapsed=true`` also the lapsed ones, in code order, a page at a time. There is no national list
    (half a million rows): ask per province."""
    code = region_code(code)
    if code == names.NATIONAL:
        raise Problem(
            400,
            "there is no national unreached list (about half a million rows); ask per province",
            type_="invalid-code",
        )
    ensure_in_scope(who, code)
    try:
        after = None if cursor is None else unreached.decode_cursor(cursor, code)
    except unreached.InvalidCursor as exc:
        raise Problem(400, f"{exc}; start again without a cursor", type_="invalid-cursor") from None
    settings = settings_of(request)
    page = await unreached.unreached(
        redis_of(request),
        settings.redis_key_prefix,
        code,
        flt,
        lapsed=lapsed,
        after=after,
        limit=limit,
        now_ms=now_ms(),
        lapse_days=settings.lapse_window_days,
    )
    if page is None:
        raise unknown(code)
    table = Table(unreached.COLUMNS, [unreached.cells(row) for row in page["items"]])
    body: UnreachedPage = {**page, "stale": documents_of(request).stale()}
    return respond(request, body, table=table, filename=f"unreached-{code}.csv")


@router.get("/v1/villages/{code}", response_model=VillageDocument, responses=_ERRORS)
async def village(
    request: Request,
    who: Caller,
    code: str = Path(
        description=VILLAGE_DOC, examples=["140322100201"], json_schema_extra=documented_pattern(VILLAGE_PATTERN)
    ),
) -> Response:
    """One village-level unit: whether and when it was reached (per carrier too), whether it is active
    within the lapse window, its population, stations and parcel counts."""
    ensure_in_scope(who, village_code(code))
    body, last_modified_ms = await documents_of(request).village(code)
    if body is None:
        raise unknown(code)
    return respond_rendered(request, Rendered(body, last_modified_ms=last_modified_ms))
