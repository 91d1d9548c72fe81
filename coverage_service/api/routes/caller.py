"""Who the caller is: the region a regulator token reads, so a client (the dashboard) opens where it may."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from typing_extensions import TypedDict

from coverage_service.api.access import Regulator, regulator
from lastmile import divisions, names, problem

router = APIRouter(tags=["access"])


class Me(TypedDict):
    name: str
    region: str
    level: str


@router.get("/v1/me", response_model=Me, responses=problem.openapi_responses(401, 403, 429))
async def me(who: Annotated[Regulator, Depends(regulator)]) -> Me:
    """The token's name (its region and a fingerprint, never the token) and the region it reads with
    everything below it: ``CN`` for a national bureau's token."""
    region = who.region or names.NATIONAL
    level = divisions.NATION if region == names.NATIONAL else divisions.level_of(region)
    return {"name": who.name, "region": region, "level": level}
