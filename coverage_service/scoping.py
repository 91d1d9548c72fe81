"""The query parameters that restrict every coverage figure: ``carrier``, ``cooperation_model``, ``min_population``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from coverage_service import views
from coverage_service.routing import redis_of, settings_of
from coverage_service.scope import Scope
from lastmile import scan
from lastmile.problem import Problem

_CARRIER_RE = r"^[a-z0-9_-]{2,32}$"


async def scope_params(
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
) -> Scope:
    if carrier is not None and cooperation_model is not None:
        raise Problem(400, "filter by carrier or by cooperation_model, not both", type_="invalid-filter")
    if cooperation_model is not None and cooperation_model not in scan.COOPERATION_MODELS:
        raise Problem(400, f"cooperation_model {cooperation_model!r} is not one of "
                      f"{', '.join(scan.COOPERATION_MODELS)}", type_="invalid-filter")  # fmt: skip
    if min_population is not None:
        tiers = await views.population_tiers(redis_of(request), settings_of(request).redis_key_prefix)
        if min_population not in tiers:
            offered = ", ".join(map(str, tiers)) or "none (the registry has no population tiers)"
            raise Problem(400, f"min_population={min_population} is not a kept tier; available: {offered} "
                          "(PRIORITY_POPULATION_TIERS, then reload the registry)", type_="invalid-filter")  # fmt: skip
    return Scope(carrier=carrier, cooperation_model=cooperation_model, min_population=min_population)


ScopeParams = Annotated[Scope, Depends(scope_params)]
