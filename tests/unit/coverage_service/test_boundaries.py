"""The dashboard's boundary files: within their size budgets, the whole territory drawn, and every county of the
bundled national registry either drawn in its province's file or listed as missing, never silently dropped.

Expected sets are read from the registry's own CSV files here, not from the build script.
"""

from __future__ import annotations

import csv
import gzip
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from lastmile.registry import BUNDLED

BOUNDARIES = Path(str(resources.files("coverage_service.dashboard").joinpath("boundaries")))
REGISTRY = BUNDLED["national"]
OUTSIDE_REGISTRY = {"71", "81", "82"}  # Taiwan, Hong Kong, Macau: drawn, not in the mainland's registry


def rows(stem: str) -> list[dict[str, str]]:
    with gzip.open(REGISTRY / f"{stem}.csv.gz", "rt", encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def topo(name: str) -> dict[str, Any]:
    return dict(json.loads((BOUNDARIES / f"{name}.topo.json").read_text(encoding="utf-8")))


PROVINCES = sorted(r["code"] for r in rows("provinces"))
COUNTIES = rows("areas")
MISSING = json.loads((BOUNDARIES / "missing.json").read_text(encoding="utf-8"))["counties"]


def test_the_national_map_draws_the_whole_territory_with_the_south_china_sea_line() -> None:
    national = topo("CN")
    drawn = {g["id"] for g in national["objects"]["provinces"]["geometries"]}
    assert drawn == set(PROVINCES) | OUTSIDE_REGISTRY
    (line,) = national["objects"]["maritime"]["geometries"]
    points = [p for part in line["coordinates"] for p in part]
    assert len(points) > 10
    assert all(105 < lon < 125 and 2 < lat < 27 for lon, lat in points)  # the South China Sea


@pytest.mark.parametrize("province", PROVINCES)
def test_every_county_is_drawn_or_listed_missing(province: str) -> None:
    counties = {r["code"]: r["name"] for r in COUNTIES if r["provinceCode"] == province}
    missing = {m["code"] for m in MISSING if m["province"] == province}
    path = BOUNDARIES / f"{province}.topo.json"
    geometries = topo(province)["objects"]["counties"]["geometries"] if path.exists() else []
    drawn = {g["id"]: g for g in geometries}
    assert set(drawn) | missing == set(counties) and not set(drawn) & missing
    for code, g in drawn.items():
        assert g["properties"]["name"] == counties[code]
        assert g["type"] in {"Polygon", "MultiPolygon"} and g["arcs"], code  # not simplified away


def test_few_counties_lack_a_boundary() -> None:
    assert {m["code"] for m in MISSING} <= {r["code"] for r in COUNTIES}
    assert len(MISSING) < 0.06 * len(COUNTIES)


def test_each_file_is_within_its_budget() -> None:
    sizes = {p.name: len(gzip.compress(p.read_bytes(), 9)) for p in BOUNDARIES.glob("*.topo.json")}
    assert sizes.pop("CN.topo.json") <= 300_000
    assert sizes and max(sizes.values()) <= 250_000


def _signed_areas(data: dict[str, Any]) -> list[tuple[str, int, float]]:
    """(unit, ring number, signed planar area in quantized units) of every ring: positive is anticlockwise."""
    arcs = []
    for arc in data["arcs"]:
        x = y = 0
        line = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            line.append((x, y))
        arcs.append(line)
    out = []
    for collection in data["objects"].values():
        for geom in collection.get("geometries", []):
            polygons = [geom["arcs"]] if geom["type"] == "Polygon" else geom.get("arcs", [])
            for polygon in polygons if geom["type"] in ("Polygon", "MultiPolygon") else []:
                for n, ring in enumerate(polygon):
                    pts = [p for i in ring for p in (arcs[i] if i >= 0 else arcs[~i][::-1])]
                    twice = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(pts, pts[1:] + pts[:1], strict=True))
                    out.append((str(geom.get("id")), n, twice / 2))
    return out


@pytest.mark.parametrize("name", ["CN", "14", "51", "65"])
def test_outer_rings_are_clockwise_and_holes_anticlockwise_as_d3_draws_them(name: str) -> None:
    # d3-geo takes a ring wound the other way for the rest of the globe: the map would be one flat colour.
    wrong = [(unit, n) for unit, n, area in _signed_areas(topo(name)) if (area < 0) != (n == 0) and area != 0]
    assert wrong == []
