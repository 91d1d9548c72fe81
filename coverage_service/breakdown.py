"""A region's figures broken down: per carrier (and "any carrier"), per cooperation model, and its parcels.

Carriers and models are those with a ``villages_reached|carrier:X`` (``|model:Y``) field in the region's
hash: the ones that reached at least one of its administrative villages. Their active villages come from
the lapse indexes of the region's counties, every (carrier or model, county) count in one pipeline.

The scope narrows the breakdown as it narrows every other figure: ``min_population`` puts every entry in
that tier; ``carrier=X`` keeps X's entry only and ``cooperation_model=Y`` Y's, and the read model keeps no
reach per carrier *and* model, so the other list is null; parcel counters are kept per region only (all
carriers, every unit, no tiers), so ``parcels`` is null under any filter rather than unfiltered.
"""

from __future__ import annotations

import asyncio
from typing import Final

import redis.asyncio as aioredis
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12 (response models)

from coverage_service import views
from coverage_service.scope import ALL, Scope
from lastmile import names, scan
from lastmile.names import field

ANY_CARRIER: Final = "*"


class CarrierFigures(TypedDict):
    carrier: str  # "*" for any carrier
    villages_reached: int
    villages_active: int
    coverage_rate: float | None


class ModelFigures(TypedDict):
    cooperation_model: str
    villages_reached: int
    villages_active: int
    coverage_rate: float | None


class Parcels(TypedDict):
    """Parcel counts of the region: all carriers, every village-level unit, every year."""

    inbound: int  # 下行
    outbound: int  # 上行
    by_event_type: dict[str, int]
    by_year: dict[str, int]  # China Standard Time year -> parcels delivered, picked up or collected


class Breakdown(TypedDict):
    """Per carrier ("*" is any carrier) and per cooperation model, in the scope's population tier. Null where
    the scope rules it out: by_cooperation_model under ?carrier=, by_carrier under ?cooperation_model=, and
    parcels under any filter (parcel counters are not kept per carrier, model or tier)."""

    by_carrier: list[CarrierFigures] | None
    by_cooperation_model: list[ModelFigures] | None
    parcels: Parcels | None


class CoverageReport(views.Coverage):
    """A region's coverage document: its figures, its children's, the definition and the breakdown."""

    breakdown: Breakdown


async def region_breakdown(
    redis: aioredis.Redis, prefix: str, code: str, sc: Scope, *, now_ms: int, lapse_ms: int
) -> Breakdown:
    """The breakdown of region ``code`` (``CN`` or 2/4/6/9 digits) in scope ``sc``; empty for an unknown code."""
    raw, counties = await asyncio.gather(
        redis.hgetall(names.key(prefix, names.REGION, code)), views.counties_under(redis, prefix, code)
    )
    region = {str(k): str(v) for k, v in raw.items()}
    tier = sc.min_population
    carriers: list[tuple[str, Scope]] = []
    models: list[tuple[str, Scope]] = []
    if sc.carrier is not None:
        carriers = [(sc.carrier, sc)]
    elif sc.cooperation_model is not None:
        models = [(sc.cooperation_model, sc)]
    else:
        carriers = [(ANY_CARRIER, sc)] + [
            (c, Scope(carrier=c, min_population=tier)) for c in _dims(region, field.CARRIER)
        ]
        models = [(m, Scope(cooperation_model=m, min_population=tier)) for m in _dims(region, field.MODEL)]
    scopes = [s for _, s in carriers + models]
    actives = await views.count_active(redis, prefix, [(counties, s) for s in scopes], now_ms - lapse_ms)
    active_of = dict(zip(scopes, actives, strict=True))
    total = int(region.get(sc.total_field, 0))

    def reach(s: Scope) -> _Reach:
        reached = int(region.get(s.reached_field, 0))
        return {"villages_reached": reached, "villages_active": active_of[s],
                "coverage_rate": views.coverage_rate(reached, total)}  # fmt: skip

    return {
        "by_carrier": None if sc.cooperation_model is not None else [
            {"carrier": c, **reach(s)} for c, s in carriers
        ],
        "by_cooperation_model": None if sc.carrier is not None else [
            {"cooperation_model": m, **reach(s)} for m, s in models
        ],
        "parcels": _parcels(region) if sc == ALL else None,
    }  # fmt: skip


class _Reach(TypedDict):
    villages_reached: int
    villages_active: int
    coverage_rate: float | None


def _dims(region: dict[str, str], family: str) -> list[str]:
    """The carriers (or models) with a reach count in the region: ``villages_reached|carrier:X`` fields."""
    head = field.VILLAGES_REACHED + field.DIM_SEP + family
    return sorted(k[len(head) :] for k in region if k.startswith(head) and field.TIER_SEP not in k)


def _parcels(region: dict[str, str]) -> Parcels:
    def count(name: str) -> int:
        return int(region.get(name, 0))

    by_type = {t: count(field.TYPE + t) for t in scan.EVENT_TYPES}
    directions = scan.direction_counts(by_type)
    return {
        "inbound": directions[scan.INBOUND],
        "outbound": directions[scan.OUTBOUND],
        "by_event_type": by_type,
        "by_year": {k[len(field.VOLUME) :]: int(v) for k, v in sorted(region.items()) if k.startswith(field.VOLUME)},
    }
