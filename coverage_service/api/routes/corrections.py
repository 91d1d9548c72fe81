"""The corrections list for regulators: every withdrawal carriers asked for in a region, what became of it and why
(docs/corrections.md); JSON or CSV."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from typing_extensions import TypedDict

from coverage_service.api.access import Regulator, ensure_in_scope, regulator
from coverage_service.api.params import REGION_PATTERN, documented_pattern, redis_of, region_code, settings_of
from coverage_service.api.representation import Table, respond
from lastmile import corrections, names, problem

router = APIRouter(tags=["corrections"])

COLUMNS: Final = (
    "decided_at",
    "status",
    "detail",
    "carrier",
    "event_id",
    "location_code",
    "event_type",
    "occurred_at",
    "reason",
    "replacement_event_id",
    "received_at",
    "position",
)


class Correction(TypedDict):
    position: str
    carrier: str
    event_id: str
    location_code: str
    event_type: str
    occurred_at: str
    reason: str
    replacement_event_id: str | None
    received_at: str | None
    decided_at: str
    status: str
    detail: str
    event: dict[str, Any]


class CorrectionsList(TypedDict):
    region: str
    carrier: str | None
    status: str | None
    total: int
    limit: int
    corrections: list[Correction]


@router.get(
    "/v1/corrections", response_model=CorrectionsList, responses=problem.openapi_responses(400, 401, 403, 429, 503)
)
async def list_corrections(
    request: Request,
    who: Annotated[Regulator, Depends(regulator)],
    region: Annotated[
        str | None,
        Query(
            description="Division code the corrections' locations are under (default: the token's region; CN: all)",
            json_schema_extra=documented_pattern(REGION_PATTERN),
        ),
    ] = None,
    carrier: Annotated[str | None, Query(pattern=r"^[a-z0-9_-]{2,32}$", description="One carrier's only")] = None,
    status: Annotated[Literal["withdrawn", "pending", "rejected"] | None, Query(description="One outcome only")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="Most corrections listed, newest decision first")] = 1000,
) -> Response:
    """Every correction carriers posted for locations in the region: the event withdrawn, the carrier's reason and
    replacement, when ingest received it, and what the worker decided (``withdrawn``; ``pending``, waiting for its
    event; ``rejected``, with the reason)."""
    code = region_code(region or who.region or names.NATIONAL)
    ensure_in_scope(who, code)
    settings = settings_of(request)
    found = await corrections.read(
        redis_of(request), settings.redis_key_prefix, carrier=carrier, region=code, status=status
    )
    body: CorrectionsList = {
        "region": code,
        "carrier": carrier,
        "status": status,
        "total": len(found),
        "limit": limit,
        "corrections": found[:limit],  # type: ignore[typeddict-item]
    }
    table = Table(COLUMNS, [[d.get(c) for c in COLUMNS] for d in found[:limit]])
    return respond(request, body, table=table, filename=f"corrections-{code}")
